"""Priors on the density (cryonb.priors) and how they enter the pipeline (issue 15).

The truths: finite differences of ``log_prob``; the MAP problem's limits (a huge exponential
rate leaves only ``V = 0``, a vanishing one leaves maximum likelihood); a ball of known
density for the data-derived scale; the command line's own parser.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from cryonb.ctf import CTFParams
from cryonb.dataset import Dataset
from cryonb.image_model import ImageModel
from cryonb.objective import KnownPoseObjective
from cryonb.priors import (
    ExponentialPrior,
    GaussianPrior,
    NoPrior,
    describe_prior,
    estimate_density_scale,
    make_prior,
    particle_mean_density,
)
from cryonb.rotations import random_rotations
from cryonb.sagd import SAGDParams, SAGDSolver, random_spheres


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("prior", [NoPrior(), ExponentialPrior(0.7), GaussianPrior(1.3),
                                   GaussianPrior(0.8, mean=0.4), make_prior("gaussian", 0.5),
                                   make_prior("exponential", 0.5)], ids=repr)
def test_gradient_matches_finite_differences(prior):
    rng = np.random.default_rng(0)
    v = rng.uniform(0.0, 2.0, (5, 5, 5))  # float64; positive (the exponential's support)
    g = np.asarray(prior.grad(v))
    assert g.shape == v.shape and g.dtype == v.dtype
    h = 1e-4
    for idx in [(0, 0, 0), (2, 3, 1), (4, 4, 4), (1, 0, 3)]:
        e = np.zeros_like(v)
        e[idx] = h
        fd = (prior.log_prob(v + e) - prior.log_prob(v - e)) / (2 * h)
        # log p is at most quadratic in each voxel: the central difference is exact up to
        # rounding of sums of ~125 terms of size ~10 (eps 2e-16 * 1e3 / 1e-4 ~ 1e-9)
        assert fd == pytest.approx(g[idx], rel=1e-6, abs=1e-7), idx


def test_the_scale_sets_rate_and_sigma_with_the_same_mean_on_the_positive_half():
    rho = 0.25
    assert make_prior("exponential", rho) == ExponentialPrior(rate=4.0)
    gauss = make_prior("gaussian", rho)
    assert isinstance(gauss, GaussianPrior) and gauss.mean == 0.0
    # the half-normal N(0, sigma^2) restricted to V >= 0 has mean sigma * sqrt(2 / pi)
    samples = np.abs(np.random.default_rng(1).normal(0.0, gauss.sigma, 400_000))
    assert samples.mean() == pytest.approx(rho, rel=0.01)  # standard error 0.1 %
    assert make_prior("none") == NoPrior()
    assert describe_prior(gauss)["density_scale"] == pytest.approx(rho)
    assert describe_prior(None) == {"name": "none"}
    with pytest.raises(ValueError, match="one of none, exponential, gaussian"):
        make_prior("laplace", 1.0)
    with pytest.raises(ValueError, match="positive density scale"):
        make_prior("exponential", None)


# --------------------------------------------------------------------------- MAP limits
def _problem(n_images=80, box=16, psize=4.0, sigma=0.05, seed=0):
    rng = np.random.default_rng(seed)
    truth = random_spheres(box, rng, n_spheres=6, mass=200.0)
    model = ImageModel(box, psize)
    rot = random_rotations(n_images, rng)
    images = model.forward(truth, rot) + rng.normal(0, sigma, (n_images, box, box))
    ds = Dataset.from_arrays(images.astype(np.float64), psize, rotations=rot)
    return ds, truth, sigma


def _solver(prior, iterations=20):
    ds, truth, sigma = _problem()
    params = SAGDParams(batch_size=20, n_heldout=10, start_max_freq_invA=0.05,
                        target_max_freq_invA=0.1, freq_step_invA=0.025,
                        iterations_per_stage=8, max_iterations=iterations)
    solver = SAGDSolver(KnownPoseObjective(ds, sigma), n_images=len(ds), box_size=16,
                        params=params, rng=np.random.default_rng(5), prior=prior,
                        initial_mass=150.0)
    return solver, truth


def test_a_huge_exponential_rate_drives_the_map_to_zero():
    free, truth = _solver(None, iterations=6)
    free.run(progress=False)
    # without a prior the map keeps (most of) its mass: it is fitted to the images of a
    # 200-unit truth from a 150-unit start
    assert free.volume.sum() > 0.5 * truth.sum()
    # rate 1e9 per unit density: the prior's gradient per voxel, 1e9 / 70 training images,
    # exceeds the data term's by orders of magnitude (each image's gradient is
    # ~ |residual| / sigma^2 ~ 1 / 0.05^2 = 400 per voxel it touches), so the first step
    # overshoots every voxel below zero and positivity leaves exactly 0; from V = 0 the
    # direction is still positive everywhere, so the map stays 0
    crushed, _ = _solver(ExponentialPrior(1e9), iterations=6)
    crushed.run(progress=False)
    assert np.all(crushed.volume == 0.0)
    rec = crushed.state.records
    # the history's prior column is -log p(V) / n_train of the map each step started from
    assert rec[-1]["prior"] == pytest.approx(-16**3 * math.log(1e9) / crushed.n_train)
    assert rec[0]["prior"] == pytest.approx(
        (1e9 * 150.0 - 16**3 * math.log(1e9)) / crushed.n_train, rel=1e-9)


@pytest.mark.parametrize("prior", [ExponentialPrior(1e-6), GaussianPrior(1e4)], ids=repr)
def test_a_vanishing_prior_gives_the_maximum_likelihood_map(prior):
    free, _ = _solver(None)
    free.run(progress=False)
    weak, _ = _solver(prior)
    weak.run(progress=False)
    # each step moves a voxel by at most step_size * |grad log p| / n_train more than without
    # the prior; while the discrete choices (line-search L, which voxels positivity clips)
    # agree, these add up to the first-order bound below (the stored gradients feed a
    # difference back only through the data term's curvature, at most once more: factor 2).
    # |grad log p| is the rate, or |V| / sigma^2 with |V| <= 1.5 max of the free map.
    # Rounding floor: the stored minibatch gradients are complex64 (GradientMemory), so once
    # the maps differ at all their steps differ by float32 rounding, 2^-24 of each step,
    # and the steps add up to about the map itself (measured: 1.2e-10 of the map for rates
    # 1e-7 and 1e-6, against 1.4e-14 for 1e-9, where the maps round alike).
    scale = np.abs(free.volume).max()
    worst = (prior.rate if isinstance(prior, ExponentialPrior) else 1.5 * scale / prior.sigma**2)
    bound = sum(r["step_size"] for r in weak.state.records) * worst / weak.n_train
    assert [r["L"] for r in weak.state.records] == [r["L"] for r in free.state.records]
    diff = np.abs(weak.volume - free.volume).max()
    assert diff <= 2 * bound + 2.0**-24 * scale, (diff, bound)
    assert bound < 1e-8 * scale  # so the two maps are the same to 1e-7 of the map
    # the objective's prior part is the prior's value over the training images, and the
    # rest is the same negative log-likelihood as without a prior
    first_w, first_f = weak.state.records[0], free.state.records[0]
    assert first_w["objective"] - first_w["prior"] == pytest.approx(first_f["objective"],
                                                                    rel=1e-9)
    assert first_f["prior"] == 0.0


def test_the_prior_enters_the_objective_divided_by_the_training_images():
    prior = ExponentialPrior(2.0)
    solver, _ = _solver(prior, iterations=1)
    start = solver.volume.copy()
    free, _ = _solver(None, iterations=1)
    rec, rec_free = solver.step(), free.step()
    expected = -prior.log_prob(start) / solver.n_train  # independent: the start's voxels
    assert rec["prior"] == pytest.approx(expected, rel=1e-12)
    assert rec["objective"] == pytest.approx(rec_free["objective"] + expected, rel=1e-9)
    assert "prior" in solver.history


# --------------------------------------------------------------------------- the scale
def _ball_images(rho=1.5, radius_px=8.0, box=48, psize=4.0, n=300, sigma=1.0, seed=0):
    rng = np.random.default_rng(seed)
    k = np.arange(box) - box // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij", sparse=True)
    ball = rho * ((x**2 + y**2 + z**2) <= radius_px**2)
    defocus = rng.uniform(10000.0, 25000.0, n)
    ctf = CTFParams(defocus_u_A=defocus, defocus_v_A=defocus, defocus_angle_deg=0.0,
                    voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    clean = ImageModel(box, psize).forward(ball, random_rotations(n, rng), None, ctf)
    images = clean + rng.normal(0.0, sigma, clean.shape)  # zero background mean
    return Dataset.from_arrays(images.astype(np.float32), psize, ctf=ctf), ball


def test_the_density_scale_of_a_ball_of_known_density():
    rho, radius_px, psize = 1.5, 8.0, 4.0
    ds, ball = _ball_images(rho, radius_px, psize=psize)
    # the mass from the images' DC: CTF(0) = 0.1, so the DC signal is 0.1 * 3,164 = 316 per
    # image against noise of sigma * box = 48 in its sum; the median of 300 is within
    # ~1.25 * 48 / sqrt(300) / 316 = 1.1 % (one standard error) of the sampled ball's mass;
    # 5 % allows that 3 times plus the projector's ~1.5 % on a sharp edge
    given = estimate_density_scale(ds, radius_A=radius_px * psize)
    sphere = 4.0 / 3.0 * math.pi * radius_px**3
    assert given == pytest.approx(ball.sum() / sphere, rel=0.05)
    assert ball.sum() / sphere == pytest.approx(rho, rel=0.02)  # the sampled ball's own
    # with the radius estimated from the images: estimate_particle_radius holds a ball's
    # blurred variance out to ~2.5 px beyond its edge (documented there; 1 px either way
    # allowed), so the scale is the mean density over that larger sphere
    estimated = estimate_density_scale(ds)
    low, high = (radius_px / (radius_px + 3.5)) ** 3, (radius_px / (radius_px + 1.5)) ** 3
    assert low * rho < estimated < high * rho, (estimated / rho, low, high)
    assert particle_mean_density(1000.0, 10.0, 2.0) == pytest.approx(
        1000.0 / (4 / 3 * math.pi * 125.0))


# --------------------------------------------------------------------------- config and CLI
def test_old_configs_without_prior_are_read_as_their_prior():
    from cryonb.config import AbInitioConfig, upgrade_saved

    assert upgrade_saved({"seed": 1, "prior_rate": None}) == {"seed": 1, "prior": "none",
                                                               "prior_scale": None}
    assert upgrade_saved({"prior_rate": 4.0})["prior_scale"] == pytest.approx(0.25)
    old = {**AbInitioConfig().as_json(), "prior_rate": None}
    del old["prior"], old["prior_scale"]
    # an old run had no prior: resuming it with today's default prior changes the job
    differ, _ = AbInitioConfig(prior="exponential").resume_differences(old)
    assert differ == ["prior"]
    assert AbInitioConfig(prior="none").resume_differences(old) == ([], [])
    with pytest.raises(ValueError, match="prior must be"):
        AbInitioConfig(prior="foo")
    with pytest.raises(ValueError, match="prior_scale must be positive"):
        AbInitioConfig(prior_scale=0.0)


def test_the_command_line_takes_the_prior_and_refuses_others(tmp_path, capsys):
    from cryonb.cli import main
    from cryonb.commands import reconstruct
    from cryonb.commands.options import dataclass_from_args
    from cryonb.config import AbInitioConfig

    parser = argparse.ArgumentParser()
    reconstruct.add_args(parser)
    args = parser.parse_args(["p.star", "--out", "run", "--prior", "gaussian",
                              "--prior-scale", "0.3"])
    config = dataclass_from_args(AbInitioConfig, args)
    assert (config.prior, config.prior_scale) == ("gaussian", 0.3)
    with pytest.raises(SystemExit):
        main(["reconstruct", str(tmp_path / "p.star"), "--out", str(tmp_path / "run"),
              "--prior", "foo"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == ["cryonb reconstruct: error: argument --prior: invalid choice: 'foo' "
                   "(choose from 'none', 'exponential', 'gaussian')"]
