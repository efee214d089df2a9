"""The ab initio job's ``backend`` setting: an unusable backend fails in one line, at once."""

import numpy as np
import pytest

from cryonb.abinitio import AbInitioConfig, AbInitioRun
from cryonb.backend import cupy_available
from cryonb.dataset import Dataset


def test_backend_defaults_to_numpy_and_takes_only_known_names():
    assert AbInitioConfig().backend == "numpy"
    assert AbInitioConfig().check_backend() == "numpy"
    with pytest.raises(ValueError, match="backend"):
        AbInitioConfig(backend="opencl")


@pytest.mark.skipif(cupy_available(), reason="CuPy and a GPU are present")
def test_cupy_without_a_gpu_fails_with_one_line_before_any_work(tmp_path, monkeypatch):
    ds = Dataset.from_arrays(np.zeros((8, 16, 16), dtype=np.float32), 4.0)

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the backend was checked")

    monkeypatch.setattr(Dataset, "normalized", no_work)
    out = tmp_path / "run"
    run = AbInitioRun(ds, out, AbInitioConfig(backend="cupy"), progress=False)
    with pytest.raises(ValueError) as err:
        run.run()
    message = str(err.value)
    assert "\n" not in message and "cupy" in message.lower()
    assert not out.exists()  # not even the run folder was made
