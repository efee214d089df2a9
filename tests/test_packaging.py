"""Packaging: pyproject.toml and environment.yml agree; the console script works."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import cryonb
from cryonb.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def _norm(req: str) -> tuple[str, str]:
    req = req.split(";")[0]  # environment markers are pip-only
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    name = m.group(1).lower().replace("_", "-")
    return name, m.group(2).replace(" ", "")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in ("widgets", "test"):
        wanted |= set(project["optional-dependencies"][extra])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {d for d in env["dependencies"] if isinstance(d, str)}
    conda -= {d for d in conda if _norm(d)[0] in ("python", "pip")}
    assert {_norm(d) for d in conda} == {_norm(d) for d in wanted}
    python_pin = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python_pin == [f"python{project['requires-python']}"]


def test_version_and_help(capsys):
    assert re.match(r"^\d+\.\d+\.\d+", cryonb.__version__)
    script = Path(sys.executable).parent / "cryonb"  # the installed console script
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"cryonb {cryonb.__version__}"
    assert main([]) == 2
    help_text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in help_text


def test_demo_writes_the_data_set_and_pictures(tmp_path):
    from cryonb.dataset import Dataset
    from cryonb.io import read_mrc

    assert main(["demo", "--out", str(tmp_path), "--n", "60", "--box", "48",
                 "--pixel-size", "7.5", "--rec-box", "16", "--time-limit", "0.05"]) == 0
    for name in ("demo.png", "map_sections.png", "ctf.png", "comparison.png",
                 "reconstruction/fsc.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    ds = Dataset.from_star(tmp_path / "particles.star")
    assert len(ds) == 60 and ds.pixel_size_A == 7.5
    assert read_mrc(tmp_path / "truth.mrc").voxel_size_A == pytest.approx(7.5)
    rec = read_mrc(tmp_path / "reconstruction" / "map.mrc")
    assert rec.shape == (16, 16, 16) and rec.voxel_size_A == pytest.approx(7.5 * 48 / 16)
    assert "FSC 0.5" in (tmp_path / "report.md").read_text()


def test_top_level_exports_are_the_design_objects_and_import_lazily():
    """``from cryonb import ...`` gives the classes of their home modules, and ``import cryonb``
    alone loads none of them (no numba, no backend)."""
    import importlib

    homes = {"Dataset": "cryonb.dataset", "ImageModel": "cryonb.image_model",
             "Quadrature": "cryonb.quadrature", "ImportanceSampler": "cryonb.importance",
             "SAGDSolver": "cryonb.sagd", "AbInitioRun": "cryonb.abinitio"}
    for name, module in homes.items():
        assert getattr(cryonb, name) is getattr(importlib.import_module(module), name)
        assert name in cryonb.__all__
    with pytest.raises(AttributeError):
        cryonb.NoSuchThing  # noqa: B018
    code = ("import sys, cryonb; "
            "print(sorted(m for m in sys.modules if m.startswith(('cryonb.', 'numba'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
