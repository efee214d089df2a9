"""Centred FFTs, grids, shells, band limits and Fourier cropping/padding."""

import numpy as np
import pytest

from cryonb.fourier import (
    band_limit_mask,
    fft2_centered,
    fft3_centered,
    fourier_crop,
    fourier_pad,
    frequency_grid_2d,
    ifft2_centered,
    ifft3_centered,
    radial_average,
    radial_index,
)


@pytest.mark.parametrize("n", [8, 9])
def test_centred_fft_origin_and_normalisation(n):
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    np.testing.assert_allclose(fft2_centered(delta), np.ones((n, n)), atol=1e-14)
    const = np.ones((n, n, n))
    spec = fft3_centered(const)
    assert spec[n // 2, n // 2, n // 2] == pytest.approx(n**3)  # unnormalised, DC at N//2
    x = np.random.default_rng(0).standard_normal((3, n, n))
    np.testing.assert_allclose(ifft2_centered(fft2_centered(x)).real, x, atol=1e-12)
    v = np.random.default_rng(1).standard_normal((n, n, n))
    np.testing.assert_allclose(ifft3_centered(fft3_centered(v)).real, v, atol=1e-12)


def test_frequency_grid_units():
    kx, ky = frequency_grid_2d(10, pixel_size_A=2.0)
    assert kx[0, 0] == pytest.approx(-0.25)  # Nyquist = 1 / (2 * 2 Å)
    assert kx[5, 6] == pytest.approx(1 / 20) and ky[6, 5] == pytest.approx(1 / 20)


def test_radial_index_and_average():
    idx = radial_index((9, 9))
    assert idx[4, 4] == 0 and idx[4, 8] == 4 and idx[0, 0] == round(np.hypot(4, 4))
    img = idx.astype(float)
    np.testing.assert_allclose(radial_average(img)[:5], np.arange(5))


def test_band_limit_mask():
    m = band_limit_mask(16)
    assert not m[0, :].any() and not m[:, 0].any()  # unpaired Nyquist row/column excluded
    m2 = band_limit_mask(20, pixel_size_A=2.0, max_freq_invA=0.1)  # radius 4 px
    assert m2.sum() == np.sum(np.hypot(*np.meshgrid(np.arange(-10, 10), np.arange(-10, 10))) < 4)


@pytest.mark.parametrize(("n", "m"), [(64, 32), (65, 33), (64, 33)])
def test_fourier_crop_keeps_low_frequencies_and_mean(n, m):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, n, n)).astype(np.float32) + 3.0
    y = fourier_crop(x, m)
    assert y.shape == (2, m, m) and y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-5)
    # a band-limited image survives crop -> pad unchanged
    smooth = fourier_pad(fourier_crop(x, m), n)
    np.testing.assert_allclose(fourier_crop(smooth, m), fourier_crop(x, m), atol=1e-4)


def test_fourier_crop_volume():
    v = np.random.default_rng(5).standard_normal((16, 16, 16))
    assert fourier_crop(v, 8, ndim=3).shape == (8, 8, 8)
    assert fourier_crop(v, 8, ndim=3).mean() == pytest.approx(v.mean())
