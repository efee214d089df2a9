"""Map superposition: a rotated, shifted (and mirrored) copy is put back on the original."""

import numpy as np
import pytest

from cryonb.alignment import _mirror, _shift_volume, align_maps, apply_alignment, rotate_volume
from cryonb.metrics import crossing, fsc
from cryonb.rotations import random_rotations
from cryonb.sagd import random_spheres


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    vol = random_spheres(32, rng, n_spheres=8, mass=1000.0)
    k = np.arange(32) - 16
    g = np.exp(-(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) / 2.0)
    return np.fft.ifftn(np.fft.fftn(vol) * np.fft.fftn(np.fft.ifftshift(g))).real  # smooth


def test_rotate_volume_convention():
    vol = np.zeros((17, 17, 17))
    vol[8, 8, 12] = 1.0  # a point at x = +4 voxels
    quarter = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # +90° about z: x -> y
    out = rotate_volume(vol, quarter)
    assert np.unravel_index(np.argmax(out), out.shape) == (8, 12, 8)  # now at y = +4


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_recovers_rotation_shift_and_hand(blobs, mirrored):
    rng = np.random.default_rng(1)
    moved = _shift_volume(rotate_volume(blobs, random_rotations(1, rng)[0], order=3),
                          np.array([6.0, -9.0, 4.5]), 3.0)
    if mirrored:
        moved = _mirror(moved)
    result = align_maps(moved, blobs, 3.0, n_coarse=800)
    assert result.flipped == mirrored
    assert result.correlation > 0.97
    aligned = apply_alignment(moved, result, 3.0)
    curve = fsc(aligned, blobs, 3.0)
    assert curve.fsc[1:9].min() > 0.9


def test_fsc_of_identical_and_independent_maps():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(24, 24, 24))
    same = fsc(a, a, 2.0)
    np.testing.assert_allclose(same.fsc, 1.0)
    # never crosses: "better than" the last shell (Nyquist, 4 Å), not a crossing at Nyquist
    res = same.resolution(0.143)
    assert not res.crossed and res.value_A == pytest.approx(4.0) and res.limit_A == 4.0
    assert str(res).startswith("better than 4.0 Å") and res.label == "<4.0 Å"
    other = fsc(a, rng.normal(size=a.shape), 2.0)
    assert np.abs(other.fsc[3:]).max() < 0.2
    assert other.resolution(0.5).crossed


def test_crossing_is_interpolated_between_the_shells():
    # shells 0..4 of an 8-px box at 2 Å/px: 0, 1/16, 1/8, 3/16, 1/4 Å^-1
    freq = np.arange(5) / 16.0
    res = crossing(freq, [1.0, 0.9, 0.5, 0.1, 0.6], 0.143)
    # between shell 2 (0.5) and 3 (0.1): f = 1/8 + (0.5 - 0.143) / 0.4 / 16
    f = 1 / 8 + (0.5 - 0.143) / 0.4 / 16
    assert res.crossed and res.value_A == pytest.approx(1 / f)
    # exactly at the threshold on a shell: that shell's resolution
    assert crossing(freq, [1.0, 0.9, 0.5, 0.1, 0.6], 0.5).value_A == pytest.approx(8.0)
    assert crossing(freq, [1.0, 0.9, 0.5, 0.1, 0.6], 0.9).value_A == pytest.approx(16.0)
    # below from shell 1 on: between shell 0 (1.0) and 1 (0.0) at 0.5 -> 1/32 Å^-1
    assert crossing(freq, [1.0, 0.0, 0.0, 0.0, 0.0], 0.5).value_A == pytest.approx(32.0)
    # shell 0 below as well: nothing is resolved
    assert crossing(freq, [0.0, 0.0, 0.0, 0.0, 0.0], 0.5).value_A == np.inf


def test_fsc_stops_at_the_band_limit_the_maps_were_fitted_to():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(24, 24, 24))
    limited = fsc(a, a, 2.0, max_freq_invA=1 / 8.0)  # shell 6 of 12 is 1/8 Å^-1
    np.testing.assert_allclose(limited.fsc[:7], 1.0)
    assert np.isnan(limited.fsc[7:]).all()
    res = limited.resolution(0.143)
    assert not res.crossed and res.value_A == pytest.approx(8.0) and res.limit_A == 8.0
    # a NaN shell ends the curve: "better than" its last determined shell
    res = crossing(np.arange(5) / 16.0, [1.0, 0.9, 0.8, np.nan, 0.9], 0.143)
    assert not res.crossed and res.value_A == pytest.approx(8.0)
    # a crossing below the band limit is a crossing, whatever lies above the limit
    b = a + 3.0 * rng.normal(size=a.shape)
    capped = fsc(a, b, 2.0, max_freq_invA=1 / 8.0).resolution(0.5)
    free = fsc(a, b, 2.0).resolution(0.5)
    assert capped.crossed and capped.value_A == pytest.approx(free.value_A)
    assert capped.to_dict()["crossed"] is True

