"""Widgets, headless: controls drive the views and the geometry is in Å about the box centre."""

import numpy as np
import pytest

pytest.importorskip("ipyvolume")
pytest.importorskip("skimage")

from cryonb.widgets import default_iso_level, isosurface


def _offset_blob(n=32, centre_px=(5, -3, 2)):
    k = np.arange(n) - n // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    cx, cy, cz = centre_px
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 20.0)


def test_isosurface_is_placed_in_angstrom_about_the_centre():
    view = isosurface(_offset_blob(), 2.0, level=0.5)
    centroid = [float(np.mean(getattr(view.mesh, a))) for a in "xyz"]
    np.testing.assert_allclose(centroid, [10.0, -6.0, 4.0], atol=0.05)  # (5, -3, 2) px * 2 Å


def test_level_slider_recomputes_the_surface():
    view = isosurface(_offset_blob(), 2.0, level=0.3)
    radius_low = np.ptp(np.asarray(view.mesh.x))
    view.level.value = 0.9
    radius_high = np.ptp(np.asarray(view.mesh.x))
    # exp(-r^2/20) = L at r = sqrt(-20 ln L): diameters 2*4.91 and 2*1.45 px, times 2 Å
    assert radius_low == pytest.approx(2 * 2 * np.sqrt(-20 * np.log(0.3)), rel=0.05)
    assert radius_high == pytest.approx(2 * 2 * np.sqrt(-20 * np.log(0.9)), rel=0.15)
    assert view.widget.children[0] is view.level


def test_default_level_encloses_five_percent():
    vol = np.random.default_rng(0).normal(size=(20, 20, 20))
    assert (vol > default_iso_level(vol)).mean() == pytest.approx(0.05, abs=0.001)
