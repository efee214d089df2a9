"""Command-line options generated from config dataclasses (cryonb.commands.options)."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pytest

from cryonb.commands import reconstruct, simulate
from cryonb.commands.options import (
    add_dataclass_options,
    dataclass_from_args,
    field_help,
    option_name,
    parse_attributes,
)

# The options `cryonb reconstruct` had before they were generated (README, docs, scripts use
# them): every one must still exist.
OLD_RECONSTRUCT_OPTIONS = [
    "--out", "--datadir", "--box", "--max-res", "--start-res",
    "--split-res", "--iterations", "--time-limit", "--iterations-per-stage", "--batch-size",
    "--particle-radius", "--shift-sigma", "--shift-extent", "--invert", "--seed",
    "--checkpoint-min", "--resume", "--known-poses", "--no-progress", "--scheduler",
    "--dask-workers"]
# replaced by --first-stage-images: still accepted by the parser, refused with one line
REPLACED_RECONSTRUCT_OPTIONS = ["--first-stage-epochs"]
OLD_SIMULATE_OPTIONS = [
    "--pdb", "--map", "--chains", "--out", "--n", "--box", "--pixel-size", "--snr",
    "--ctf-table", "--ctf-ranges", "--shift-sigma", "--bfactor", "--seed", "--chunk",
    "--no-progress"]


def _config_cls():
    from cryonb.abinitio import AbInitioConfig

    return AbInitioConfig


def _reconstruct_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    reconstruct.add_args(parser)
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


# --------------------------------------------------------------------------- the generator
@dataclass(frozen=True)
class _Example:
    """An example.

    Attributes
    ----------
    size_px : int
        Box size.
    res_A : float or None
        Target resolution, Å
        (None: Nyquist).
    low, high : float
        Both ends of the band.
    check : bool
        Whether to check.
    mode : str
        How.
    kind : {"a", "b"}
        Which kind.
    every_s : float
        Interval.
    pair : (float, float)
        Two numbers.

    Notes
    -----
    not : an attribute
        This line is not in the Attributes section.
    """

    size_px: int = 64
    res_A: float | None = None
    low: float = 1.0
    high: float = 2.0
    check: bool = True
    mode: str = "fast"
    kind: Literal["a", "b"] = "a"
    every_s: float = 120.0
    pair: tuple[float, float] = (1.0, 2.0)
    undocumented: int = 3


def _example_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_dataclass_options(parser, _Example, rename={"size_px": "--box"},
                          units={"every_s": ("min", 60.0)},
                          choices={"mode": ("fast", "slow"), "missing_field": ("x",)})
    return parser


def test_option_names():
    assert option_name("shift_sigma_A") == "--shift-sigma"
    assert option_name("time_limit_min") == "--time-limit"
    assert option_name("checkpoint_every_s") == "--checkpoint-every"
    assert option_name("freq_step_invA") == "--freq-step"
    assert option_name("bfactor_A2") == "--bfactor"
    assert option_name("batch_size") == "--batch-size"
    assert option_name("seed") == "--seed"


def test_numpydoc_attributes_are_parsed():
    docs = parse_attributes(_Example.__doc__)
    assert docs == {
        "size_px": "Box size.", "res_A": "Target resolution, Å (None: Nyquist).",
        "low": "Both ends of the band.", "high": "Both ends of the band.",
        "check": "Whether to check.", "mode": "How.", "kind": "Which kind.",
        "every_s": "Interval.", "pair": "Two numbers."}
    assert parse_attributes("No sections.") == {}
    assert field_help(_Example) == docs  # 'undocumented' is simply absent


def test_generated_options_types_defaults_and_help():
    parser = _example_parser()
    actions = _actions(parser)
    assert actions["size_px"].option_strings == ["--box"]
    assert actions["check"].option_strings == ["--check", "--no-check"]
    assert actions["mode"].choices == ["fast", "slow"]
    assert actions["kind"].choices == ["a", "b"]
    assert "missing_field" not in actions
    assert actions["low"].help == "Both ends of the band. (default: 1)"
    assert actions["res_A"].help == "Target resolution, Å (None: Nyquist). (default: None)"
    assert actions["every_s"].help == "Interval. [min] (default: 2)"
    assert actions["undocumented"].help == "undocumented (default: 3)"
    assert dataclass_from_args(_Example, parser.parse_args([])) == _Example()
    args = parser.parse_args(["--box", "32", "--res", "8.5", "--low", "0.5", "--no-check",
                              "--mode", "slow", "--kind", "b", "--every", "0.5",
                              "--pair", "3", "4", "--undocumented", "5"])
    assert dataclass_from_args(_Example, args) == _Example(
        size_px=32, res_A=8.5, low=0.5, check=False, mode="slow", kind="b", every_s=30.0,
        pair=(3.0, 4.0), undocumented=5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "medium"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--box", "3.5"])


def test_fields_without_a_default_are_required_unless_given_one():
    @dataclass
    class Needs:
        n: int

    parser = argparse.ArgumentParser()
    add_dataclass_options(parser, Needs)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    parser = argparse.ArgumentParser()
    add_dataclass_options(parser, Needs, defaults={"n": 7})
    assert dataclass_from_args(Needs, parser.parse_args([])) == Needs(7)


# --------------------------------------------------------------------------- cryonb reconstruct
def test_every_config_field_is_an_option_with_the_dataclass_default():
    cls = _config_cls()
    parser = _reconstruct_parser()
    actions = _actions(parser)
    names = {f.name for f in dataclasses.fields(cls)}
    assert names - actions.keys() == set(reconstruct.EXCLUDE)
    for flag in OLD_RECONSTRUCT_OPTIONS:
        assert flag in parser._option_string_actions, flag
    config = dataclass_from_args(cls, parser.parse_args(["p.star", "--out", "run"]))
    truth = cls()  # the independent truth: the dataclass's own defaults
    for f in dataclasses.fields(cls):
        assert getattr(config, f.name) == getattr(truth, f.name), f.name
    # the empty command line of the generated options alone gives the same
    bare = argparse.ArgumentParser()
    add_dataclass_options(bare, cls, exclude=reconstruct.EXCLUDE, rename=reconstruct.RENAME,
                          units=reconstruct.UNITS, choices=reconstruct.CHOICES)
    assert dataclass_from_args(cls, bare.parse_args([])) == truth


def test_help_is_the_docstring_description_and_shows_the_default():
    cls = _config_cls()
    docs = field_help(cls)
    actions = _actions(_reconstruct_parser())
    truth = cls()
    for f in dataclasses.fields(cls):
        if f.name in reconstruct.EXCLUDE:
            continue
        text = actions[f.name].help.replace("%%", "%")
        description = docs[f.name]  # every field is documented in the class docstring
        assert text.startswith(description), f.name
        _, factor = reconstruct.UNITS.get(f.name, (None, 1.0))
        value = getattr(truth, f.name)
        shown = value if value is None or isinstance(value, bool | str) else f"{value / factor:g}"
        assert text.endswith(f"(default: {shown})"), (f.name, text)


def _other_value(name: str, value, choices):
    if name in choices:
        return next(c for c in choices[name] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, str):
        return value + "x"
    return None


def test_round_trip_with_other_values():
    cls = _config_cls()
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    parser = _reconstruct_parser()
    actions = _actions(parser)
    truth = cls()
    values, argv = {}, ["p.star", "--out", "run"]
    for f in dataclasses.fields(cls):
        if f.name in reconstruct.EXCLUDE:
            continue
        # the choices the parser offers (CHOICES, or the field's Literal type)
        offered = {f.name: actions[f.name].choices} if actions[f.name].choices else {}
        value = _other_value(f.name, getattr(truth, f.name), {**reconstruct.CHOICES, **offered})
        if value is None:  # an optional field left at None: give it a value of its type
            value = 12.5 if "float" in str(hints[f.name]) else 24
        values[f.name] = value
        flags = actions[f.name].option_strings
        if isinstance(value, bool):
            argv.append(flags[0] if value else flags[1])
        else:
            _, factor = reconstruct.UNITS.get(f.name, (None, 1.0))
            argv += [flags[0], str(value / factor if factor != 1.0 else value)]
    config = dataclass_from_args(cls, parser.parse_args(argv))
    expected = replace(truth, **values)
    for f in dataclasses.fields(cls):
        assert getattr(config, f.name) == pytest.approx(getattr(expected, f.name)), f.name
        if f.name not in reconstruct.EXCLUDE:
            assert getattr(config, f.name) != getattr(truth, f.name), f.name
    assert config.checkpoint_every_s == pytest.approx(60.0 * float(
        argv[argv.index("--checkpoint-min") + 1]))


def test_invalid_config_value_is_a_one_line_error(tmp_path, capsys):
    from cryonb.cli import main

    with pytest.raises(SystemExit, match="common_fraction"):
        main(["reconstruct", str(tmp_path / "p.star"), "--out", str(tmp_path / "run"),
              "--common-fraction", "2"])
    for flag in REPLACED_RECONSTRUCT_OPTIONS:  # one line naming the new option
        with pytest.raises(SystemExit, match="replaced by --first-stage-images"):
            main(["reconstruct", str(tmp_path / "p.star"), "--out", str(tmp_path / "run"),
                  flag, "3"])


def test_reconstruct_help_runs():
    script = Path(sys.executable).parent / "cryonb"
    proc = subprocess.run([str(script), "reconstruct", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in OLD_RECONSTRUCT_OPTIONS:
        assert flag in proc.stdout
    if "backend" in {f.name for f in dataclasses.fields(_config_cls())}:
        assert "--backend {numpy,cupy}" in proc.stdout


def test_top_level_parser_does_not_import_the_solver():
    code = ("import sys; from cryonb.cli import build_parser; build_parser([]); "
            "print('cryonb.abinitio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------- cryonb simulate
def test_simulate_options_follow_simulation_params():
    from cryonb.synthetic.particles import SimulationParams

    parser = argparse.ArgumentParser()
    simulate.add_args(parser)
    for flag in OLD_SIMULATE_OPTIONS:
        assert flag in parser._option_string_actions, flag
    params = dataclass_from_args(SimulationParams, parser.parse_args(["--out", "x"]))
    assert params == SimulationParams(n_particles=1000)
    args = parser.parse_args(["--out", "x", "--n", "20", "--snr", "0.1", "--chunk", "7",
                              "--defocus-range", "5000", "9000"])
    assert dataclass_from_args(SimulationParams, args) == SimulationParams(
        n_particles=20, snr=0.1, chunk_size=7, defocus_range_A=(5000.0, 9000.0))
    assert simulate.build_args(out="x", n_particles=5).n_particles == 5


# --------------------------------------------------------------------------- full-box warning
@pytest.mark.parametrize(("extra", "warned"), [((), True), (("--max-res", "20"), False),
                                               (("--box", "64"), False)])
def test_reconstruct_warns_on_stderr_before_a_full_large_box_run(tmp_path, capsys, monkeypatch,
                                                                  extra, warned):
    """Above 128 px without --box or --max-res: one note line on stderr, before the run."""
    import numpy as np

    import cryonb.abinitio
    from cryonb.cli import main
    from cryonb.synthetic.particles import SimulationParams, simulate_to_files

    n, psize = reconstruct.LARGE_BOX + 8, 2.0
    k = np.arange(n) - n // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    blob = np.exp(-(x**2 + y**2 + (z / 2) ** 2) / (2 * 12.0**2)).astype(np.float32)
    star = simulate_to_files(blob, psize, SimulationParams(n_particles=6, snr=1.0),
                             np.random.default_rng(0), tmp_path / "data",
                             progress=False).star_path
    started = []

    class NotRun:  # stands in for the job: the test is about what happens before it
        def __init__(self, dataset, out_dir, config, **kwargs):
            started.append(config)
            self.messages = []

        def run(self, resume=False):
            return {"status": "interrupted"}

    monkeypatch.setattr(cryonb.abinitio, "AbInitioRun", NotRun)
    code = main(["reconstruct", str(star), "--out", str(tmp_path / "run"), "--no-progress",
                 *extra])
    assert code == 130 and len(started) == 1
    notes = [line for line in capsys.readouterr().err.splitlines() if "--max-res" in line]
    if warned:
        assert len(notes) == 1 and notes[0].startswith("note: no --box or --max-res")
        assert f"full {n}-px box" in notes[0] and f"Nyquist ({2 * psize:.1f} Å)" in notes[0]
    else:
        assert notes == []
