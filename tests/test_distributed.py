"""Dask: the distributed objective and solver equal the in-process ones (same seed).

A ``LocalCluster`` of 2 single-threaded worker processes evaluates the paper's objective on a
small simulated problem (box 16, 160 images with CTFs and noise, importance sampling on); the
in-process :class:`MarginalObjective` is the independent truth.  float64 throughout, so
"equal" means equal up to the order of the shards' floating-point sums.
"""

import os
import signal
import time

import numpy as np
import pytest

from cryonb.ctf import CTFParams
from cryonb.dataset import Dataset
from cryonb.distributed import DistributedObjective, dask_client
from cryonb.image_model import ImageModel
from cryonb.importance import ImportanceSampler, ISSchedule
from cryonb.objective import MarginalObjective, QuadratureOptions
from cryonb.rotations import random_rotations
from cryonb.sagd import SAGDParams, SAGDSolver, random_spheres

BOX, PSIZE, N = 16, 10.0, 160
W0 = 1 / 40


@pytest.fixture(scope="module")
def client():
    """``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``, as the CLI makes it."""
    with dask_client(n_workers=2, dashboard_address=None) as c:
        yield c


def test_local_cluster_workers(client):
    """2 single-threaded processes; BLAS limited to 1 thread, glibc's malloc left dynamic;
    SIGINT ignored."""
    assert sorted(client.nthreads().values()) == [1, 1]
    env = client.run(lambda: (os.getpid(), os.environ.get("OPENBLAS_NUM_THREADS"),
                              os.environ.get("MALLOC_TRIM_THRESHOLD_")))
    pids = {v[0] for v in env.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {v[1:] for v in env.values()} == {("1", None)}
    for pid in pids:  # Ctrl-C in a terminal: the workers carry on, the driver stops the run
        os.kill(pid, signal.SIGINT)
    time.sleep(1.0)
    assert {v[0] for v in client.run(lambda: (os.getpid(),)).values()} == pids


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    truth = random_spheres(BOX, rng, n_spheres=5, mass=300.0)
    model = ImageModel(BOX, PSIZE)
    rot = random_rotations(N, rng)
    shifts = rng.normal(0, 5.0, (N, 2))
    ctf = CTFParams(defocus_u_A=rng.uniform(8e3, 2e4, N), defocus_v_A=rng.uniform(8e3, 2e4, N),
                    defocus_angle_deg=rng.uniform(0, 180, N), voltage_kV=200.0, cs_mm=2.0,
                    amplitude_contrast=0.1)
    clean = model.forward(truth, rot, shifts, ctf)
    sigma = float(clean.std())  # SNR 1
    images = clean + rng.normal(0, sigma, clean.shape)
    return Dataset.from_arrays(images.astype(np.float32), PSIZE, ctf=ctf), truth, sigma


def _objective(problem, seed=7):
    ds, _, sigma = problem
    sampler = ImportanceSampler(len(ds), ISSchedule.constant(0.1, 1.0),
                                dense_fraction=1.0)  # the sparse path, shard by shard
    return MarginalObjective(ds, sigma, rng=np.random.default_rng(seed), sampler=sampler,
                             quadrature=QuadratureOptions(particle_radius_A=60.0,
                                                          shift_sigma_A=5.0,
                                                          shift_extent_A=10.0),
                             dtype=np.float64)


def _assert_same_evaluation(a, b):
    np.testing.assert_allclose(b.nll, a.nll, rtol=1e-11, atol=0)
    if a.grad is not None:
        scale = np.abs(a.grad).max()
        assert scale > 0
        assert np.abs(b.grad - a.grad).max() <= 1e-10 * scale
    assert b.fraction_evaluated == a.fraction_evaluated


def _assert_same_sampler(a, b):
    """Every particle's stored posterior marginals (float32) are the same."""
    np.testing.assert_array_equal(b.seen(np.arange(N)), a.seen(np.arange(N)))
    for pid in range(N):
        for domain in ("directions", "inplane", "shifts"):
            ia, pa, ra = a.stored_distribution(pid, domain)
            ib, pb, rb = b.stored_distribution(pid, domain)
            np.testing.assert_array_equal(ib, ia)
            np.testing.assert_allclose(pb, pa, rtol=1e-5, atol=1e-7)
            assert rb == pytest.approx(ra, abs=1e-6)


def test_objective_equals_in_process(problem, client):
    _, truth, _ = problem
    ref = _objective(problem)
    dist = DistributedObjective(_objective(problem), client)
    for obj in (ref, dist):
        obj.set_band_limit(W0)
    rng = np.random.default_rng(1)
    batch = np.sort(rng.choice(N, 60, replace=False))
    other = np.setdiff1d(np.arange(N), batch)[:30]
    start = random_spheres(BOX, rng, mass=300.0)
    calls = [  # (volume, indices, gradient, record)
        (start, batch, True, True),   # no state yet: every point
        (truth, batch, True, True),   # importance-sampled from the recorded posteriors
        (truth, other, False, True),  # like the held-out set
        (start, batch, True, False),
    ]
    fractions = []
    for it, (vol, idx, grad, record) in enumerate(calls):
        a = ref.evaluate(vol, idx, gradient=grad, record=record, iteration=it)
        fractions.append(a.fraction_evaluated)
        b = dist.evaluate(vol, idx, gradient=grad, record=record, iteration=it)
        _assert_same_evaluation(a, b)
        # the line search: the same pose samples and images, another map
        a2 = ref.evaluate(0.5 * vol, idx, gradient=False, record=False, iteration=it,
                          reuse=a.token)
        b2 = dist.evaluate(0.5 * vol, idx, gradient=False, record=False, iteration=it,
                           reuse=b.token)
        _assert_same_evaluation(a2, b2)
        for name in ("map_direction", "map_inplane", "map_shift", "n_evaluated"):
            np.testing.assert_array_equal(getattr(dist.last_result, name),
                                          getattr(ref.last_result, name))
    assert fractions[0] == 1.0 and fractions[1] < 0.9  # importance sampling skipped points
    assert ref.rng.bit_generator.state == dist.rng.bit_generator.state
    _assert_same_sampler(ref.sampler, dist.sampler)
    # one shard per worker thread, on both workers; each shard's images were prepared by
    # the worker that owns it
    assert sorted(dist.shard_workers) == sorted(client.nthreads())
    parts, _ = b.token
    assert len(parts) == 2
    owners = client.who_has([p.prepared for p in parts])
    for p in parts:
        assert owners[p.prepared.key] == (p.worker,)


def _solver(problem, client=None):
    ds, _, _ = problem
    params = SAGDParams(batch_size=40, n_heldout=20, start_max_freq_invA=W0,
                        target_max_freq_invA=1 / 30, freq_step_invA=1 / 240,
                        iterations_per_stage=2, linesearch_every=2, heldout_every=2,
                        max_iterations=50)
    return SAGDSolver(_objective(problem), n_images=len(ds), box_size=BOX, params=params,
                      rng=np.random.default_rng(3), initial_mass=300.0, client=client)


def _assert_same_step(a, b):
    for key in ("objective", "heldout_nll", "L", "max_freq_invA", "fraction_evaluated"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-10, equal_nan=True)
    assert b["batch"] == a["batch"]


def test_sagd_iterations_and_checkpoint_equal_in_process(problem, client):
    ref = _solver(problem)
    dist = _solver(problem, client)
    assert isinstance(dist.objective, DistributedObjective)
    start = ref.volume.copy()
    np.testing.assert_array_equal(dist.volume, start)
    for _ in range(2):
        _assert_same_step(ref.step(), dist.step())
    ref_state, dist_state = ref.state_dict(), dist.state_dict()
    # a checkpoint of the distributed run resumes in process, and the other way round
    resumed_local, resumed_dist = _solver(problem), _solver(problem, client)
    resumed_local.load_state_dict(dist_state)
    resumed_dist.load_state_dict(ref_state)
    for _ in range(2):  # the band limit grows at the first of these
        a = ref.step()
        for other in (dist, resumed_local, resumed_dist):
            _assert_same_step(a, other.step())
    assert ref.state.records[-1]["max_freq_invA"] > W0
    assert ref.state.records[-1]["fraction_evaluated"] < 1.0
    scale = np.abs(ref.volume).max()
    assert np.abs(ref.volume - start).max() > 1e-2 * scale  # the map did move
    for other in (dist, resumed_local, resumed_dist):
        assert np.abs(other.volume - ref.volume).max() <= 1e-10 * scale
    _assert_same_sampler(ref.objective.sampler, dist.objective.sampler)
    _assert_same_sampler(ref.objective.sampler, resumed_dist.objective.sampler)
    assert ref.objective.rng.bit_generator.state == resumed_dist.objective.rng.bit_generator.state


def test_only_marginal_objectives_are_distributed():
    with pytest.raises(TypeError, match="MarginalObjective"):
        DistributedObjective(object(), None)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """MRC stacks on disk, the CLI's options, and the in-process run's folder."""
    from cryonb.cli import main as cli_main
    from cryonb.synthetic.particles import SimulationParams, simulate_to_files

    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    truth = random_spheres(BOX, rng, n_spheres=5, mass=300.0).astype(np.float32)
    params = SimulationParams(n_particles=120, snr=1.0, shift_sigma_A=5.0, bfactor_A2=50.0,
                              defocus_range_A=(8000.0, 20000.0))
    simulate_to_files(truth, 12.0, params, rng, tmp / "data", progress=False)
    args = ["reconstruct", str(tmp / "data" / "particles.star"), "--start-res", "40",
            "--split-res", "35", "--iterations-per-stage", "3", "--batch-size", "40",
            "--particle-radius", "50", "--shift-sigma", "5", "--shift-extent", "10",
            "--iterations", "4", "--no-progress"]
    assert cli_main([*args, "--out", str(tmp / "local")]) == 0
    return args, tmp


def _assert_same_maps(a_dir, b_dir):
    from cryonb.io import read_mrc

    for name in ("half1.mrc", "half2.mrc", "map.mrc"):
        a = np.asarray(read_mrc(a_dir / name).data)
        b = np.asarray(read_mrc(b_dir / name).data)
        assert np.abs(a).max() > 0
        # float32 likelihoods (the CLI's default): shard sums differ in the last bits
        assert np.abs(b - a).max() <= 1e-4 * np.abs(a).max(), name


def test_cli_scheduler_matches_in_process(cli_run, client, capsys):
    """``cryonb reconstruct --scheduler ADDRESS`` (workers read the stacks themselves)."""
    from cryonb.cli import main as cli_main

    args, tmp = cli_run
    address = client.scheduler.address
    assert cli_main([*args, "--out", str(tmp / "scheduler"), "--scheduler", address]) == 0
    assert "Dask: 2 workers" in capsys.readouterr().out
    _assert_same_maps(tmp / "local", tmp / "scheduler")


@pytest.mark.slow
def test_cli_dask_workers_matches_in_process(cli_run):
    """``cryonb reconstruct --dask-workers 2`` starts its own LocalCluster (~10-20 s here)."""
    from cryonb.cli import main as cli_main

    args, tmp = cli_run
    assert cli_main([*args, "--out", str(tmp / "dask"), "--dask-workers", "2"]) == 0
    _assert_same_maps(tmp / "local", tmp / "dask")
