"""Pruned padded 3D transforms of the Projector against dense NumPy FFTs."""

import numpy as np
import pytest

from cryonb.fourier import crop_center, pad_center
from cryonb.projection import Projector


@pytest.mark.parametrize(("box", "pad"), [(12, 2), (13, 2), (10, 3), (11, 1)])
def test_padded_transforms_equal_dense_ffts(box, pad):
    """volume_to_fourier = centred FFT of the zero-padded volume; fourier_to_volume_adjoint =
    its adjoint, also from the centred sub-cube of a band-limited Fourier volume."""
    rng = np.random.default_rng(box + pad)
    proj = Projector(box, pad=pad, gridding_correction=False)
    p = proj.padded_size
    vol = rng.standard_normal((box,) * 3)
    padded = np.fft.ifftshift(pad_center(vol, p, ndim=3))
    dense = np.fft.fftshift(np.fft.fftn(padded))
    np.testing.assert_allclose(proj.volume_to_fourier(vol), dense, atol=1e-10 * np.abs(dense).max())

    spec = rng.standard_normal((p,) * 3) + 1j * rng.standard_normal((p,) * 3)
    adj = crop_center(np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(spec))).real * p**3, box, 3)
    np.testing.assert_allclose(proj.fourier_to_volume_adjoint(spec), adj, atol=1e-10 * p**3)

    size = proj.support_size(0.3 * box)
    assert size < p or pad == 1
    k = np.arange(p) - p // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    outside = np.maximum(np.maximum(abs(kx), abs(ky)), abs(kz)) > size // 2
    spec[outside] = 0
    adj = crop_center(np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(spec))).real * p**3, box, 3)
    sub = proj.crop_support(spec, size)
    assert sub.shape == (size,) * 3
    np.testing.assert_allclose(proj.fourier_to_volume_adjoint(sub), adj, atol=1e-10 * p**3)


def test_slice_from_the_support_cube_is_unchanged():
    """Slices at |k| <= k_max from the sub-cube equal those from the whole padded grid."""
    rng = np.random.default_rng(0)
    proj = Projector(14)
    vft = proj.volume_to_fourier(rng.standard_normal((14, 14, 14)))
    k_max = 4.5
    coords = rng.uniform(-1, 1, (200, 2))
    coords *= k_max / np.linalg.norm(coords, axis=1, keepdims=True).max()
    q, _ = np.linalg.qr(rng.standard_normal((5, 3, 3)))
    sub = proj.crop_support(vft, proj.support_size(k_max))
    for numba in (True, False):
        pr = Projector(14, use_numba=numba)
        np.testing.assert_allclose(pr.slice(sub, q, coords), pr.slice(vft, q, coords),
                                   rtol=0, atol=1e-12 * np.abs(vft).max())
