"""The particle radius estimated from the images (cryonb.diagnostics.estimate_particle_radius)."""

import numpy as np
import pytest

from cryonb.diagnostics import estimate_particle_radius
from cryonb.synthetic.particles import SimulationParams, load_simulation, simulate_to_files

PSIZE = 4.0
BOX = 48


def _ball(radius_px: float) -> np.ndarray:
    k = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    return (np.sqrt(x**2 + y**2 + z**2) <= radius_px).astype(np.float64)


@pytest.mark.parametrize("radius_px", [8.0, 14.0])
def test_the_radius_of_a_ball_is_found_from_noisy_ctf_images(tmp_path, radius_px):
    rng = np.random.default_rng(4)
    params = SimulationParams(n_particles=600, snr=0.1, shift_sigma_A=0.0, bfactor_A2=50.0,
                              defocus_range_A=(8000.0, 20000.0))
    simulate_to_files(_ball(radius_px), PSIZE, params, rng, tmp_path, progress=False)
    ds = load_simulation(tmp_path).normalized()
    found_px = estimate_particle_radius(ds) / PSIZE
    # a ball of radius R projects to a disc whose signal variance ~ (R^2 - r^2) falls to zero
    # at R: 95 % of it lies within 0.88 R.  The phase-flipped images still carry |CTF| and
    # the B-factor, a blur of ~2 px, and rings are 1 px wide (+0.5 px): measured R + 2.5 px
    # for both radii (seed 4); the bounds allow 1.5 px more (noise of 600 images) above and
    # 0.13 R + 1 px below.  The old default (0.4 box = 19.2 px) fails both.
    assert radius_px * 0.75 - 1.0 <= found_px <= radius_px + 4.0, found_px


def test_pure_noise_gives_the_clamped_range():
    from cryonb.dataset import Dataset

    rng = np.random.default_rng(0)
    ds = Dataset.from_arrays(rng.normal(size=(300, 32, 32)).astype(np.float32), 3.0)
    radius = estimate_particle_radius(ds)
    assert 0.15 * 32 * 3.0 <= radius <= 0.5 * 32 * 3.0
