"""Backend selection: NumPy by default, per object or per block, CuPy only when available."""

import numpy as np
import pytest

from cryonb.backend import cupy_available, get_backend, use_backend
from cryonb.image_model import ImageModel
from cryonb.rotations import random_rotations


def test_default_is_numpy_and_context_manager_nests():
    assert get_backend().name == "numpy"
    with use_backend("numpy") as bk:
        assert bk.name == "numpy" and get_backend() is bk
    assert get_backend().name == "numpy"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tpu")


@pytest.mark.skipif(cupy_available(), reason="a GPU is present; this checks the no-GPU error")
def test_cupy_without_gpu_gives_a_clear_error():
    with pytest.raises(RuntimeError, match="cryonb\\[gpu\\]"):
        get_backend("cupy")


@pytest.mark.skipif(not cupy_available(), reason="needs CuPy and a CUDA GPU (none on CI)")
def test_cupy_forward_matches_numpy():  # pragma: no cover - GPU only
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((16, 16, 16))
    rot = random_rotations(3, rng)
    ref = ImageModel(16, 2.0).forward(vol, rot)
    gpu = ImageModel(16, 2.0, backend="cupy").forward(vol, rot)
    np.testing.assert_allclose(gpu.get(), ref, atol=1e-8)


def test_numpy_path_without_numba_matches_numba():
    """The backend-generic (vectorised) path is what CuPy runs; check it on the host."""
    from cryonb.projection import Projector

    rng = np.random.default_rng(1)
    vol = rng.standard_normal((12, 12, 12))
    rot = random_rotations(4, rng)
    model = ImageModel(12, 2.0)
    ft = model.projector.volume_to_fourier(vol)
    generic = Projector(12, use_numba=False).slice(ft, rot, model.coords_px)
    np.testing.assert_allclose(model.projector.slice(ft, rot, model.coords_px), generic,
                               atol=1e-10)
