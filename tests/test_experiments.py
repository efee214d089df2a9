"""The paper's experiments (cryonb/experiments): projection-matching refinement (Fig. 9),
aligned snapshots (Fig. 5), per-domain fractions (Fig. 7) and the priors comparison."""

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest

from cryonb.abinitio import AbInitioConfig
from cryonb.alignment import rotate_volume
from cryonb.backprojection import BackprojectionAccumulator
from cryonb.dataset import Dataset
from cryonb.experiments import (
    LocalWindow,
    RunRecorder,
    Snapshot,
    align_snapshots,
    domain_fraction_table,
    evenly_spaced,
    fractions_by_band_limit,
    history_fraction_table,
    prior_configs,
    projection_matching_refinement,
    sphere_volume,
)
from cryonb.metrics import fsc
from cryonb.objective import MarginalObjective, QuadratureOptions
from cryonb.rotations import random_rotations

BOX, PSIZE, W = 16, 6.0, 1.0 / 15.0
# at 1/15 Å^-1 with a 40 Å radius: 378 directions x 34 in-plane x 5 shifts (6 Å apart)
OPTIONS = QuadratureOptions(particle_radius_A=40.0, shift_sigma_A=6.0, shift_extent_A=6.0)


def _rotation_angle(a, b):
    """Geodesic angle (rad) between rotation matrices, (n, 3, 3) each."""
    cos = (np.einsum("nij,nij->n", a, b) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


@pytest.fixture(scope="module")
def problem():
    """A random (16 px)^3 map, its grid at W and the image model."""
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((BOX,) * 3)
    probe = MarginalObjective(Dataset.from_arrays(np.zeros((1, BOX, BOX)), PSIZE), 1.0,
                              rng=rng, quadrature=OPTIONS)
    probe.set_band_limit(W)
    return vol, probe.likelihood.quadrature, probe.likelihood.model, probe.model_for(W)


def test_refinement_started_at_the_truth_keeps_grid_poses_and_backprojects_them(problem):
    """Noiseless images at poses of the grid, refined from the true map: the global search
    and the local one find exactly the simulated poses, and each iteration's map is the
    direct back-projection at the true poses."""
    vol, quad, model, bp_model = problem
    rng = np.random.default_rng(1)
    n = 40
    r_idx = rng.choice(quad.n_rotations, n, replace=False)
    s_idx = rng.integers(0, quad.n_shifts, n)
    rots, shifts = quad.rotations()[r_idx], quad.shifts_A[s_idx]
    images = np.asarray(model.forward(vol, rots, shifts, None))
    res = projection_matching_refinement(Dataset.from_arrays(images, PSIZE), vol, iterations=2,
                                         rng=rng, max_freq_invA=W, quadrature=OPTIONS,
                                         noise_sigma=0.01 * images.std())
    d_true, i_true = quad.split_pose_index(r_idx)
    expected = np.stack([d_true, i_true, s_idx], 1)
    for k in range(2):
        np.testing.assert_array_equal(res.pose_indices[k], expected)
        np.testing.assert_allclose(res.rotations[k], rots, atol=1e-12)
        np.testing.assert_allclose(res.shifts_A[k], shifts, atol=1e-12)
    assert res.fraction_evaluated[0] == 1.0  # global
    assert res.fraction_evaluated[1] < 0.05  # local: a few grid spacings
    acc = BackprojectionAccumulator(bp_model)
    acc.add(images, rots, shifts, None)
    direct = acc.direct_inversion()
    scale = np.abs(direct).max()
    for k in range(2):
        np.testing.assert_allclose(res.volumes[k], direct, rtol=0, atol=1e-6 * scale)


def test_refinement_off_grid_recovers_poses_within_the_grid_spacing(problem):
    """Noiseless images at random poses and origins: from the true map, every pose found is
    within one direction plus one in-plane spacing of the truth (the grid's nearest rotation
    is within about half of each) and every origin within one shift spacing."""
    vol, quad, model, _ = problem
    rng = np.random.default_rng(2)
    n = 30
    rots = random_rotations(n, rng)
    shifts = rng.uniform(-3.0, 3.0, (n, 2))
    images = np.asarray(model.forward(vol, rots, shifts, None))
    res = projection_matching_refinement(Dataset.from_arrays(images, PSIZE), vol, iterations=2,
                                         rng=rng, max_freq_invA=W, quadrature=OPTIONS,
                                         noise_sigma=0.01 * images.std())
    bound = quad.direction_spacing_rad + quad.inplane_spacing_rad
    for k in range(2):
        assert _rotation_angle(res.rotations[k], rots).max() <= bound
        assert np.linalg.norm(res.shifts_A[k] - shifts, axis=1).max() <= quad.shift_spacing_A


def test_local_window_is_the_ball_around_the_previous_pose(problem):
    """Directions and origins of a local subset are exactly the grid points within the radius
    (brute force over the grid) plus the nearest one; in-plane angles include the one that
    matches the previous rotation at its own direction."""
    _, quad, _, _ = problem
    rng = np.random.default_rng(3)
    rots, shifts = random_rotations(5, rng), rng.uniform(-5.0, 5.0, (5, 2))
    radius = 2.0
    subsets = LocalWindow(rots, shifts, radius).sample(np.arange(5), quad, 0, rng)
    for r, t, sub in zip(rots, shifts, subsets, strict=True):
        angles = np.arccos(np.clip(quad.directions @ r[:, 2], -1.0, 1.0))
        want = set(np.flatnonzero(angles <= radius * quad.direction_spacing_rad + 1e-9))
        want.add(int(np.argmin(angles)))
        assert set(sub.directions.tolist()) == want
        dist = np.linalg.norm(quad.shifts_A - t, axis=1)
        want_s = set(np.flatnonzero(dist <= radius * quad.shift_spacing_A + 1e-9))
        want_s.add(int(np.argmin(dist)))
        assert set(sub.shifts.tolist()) == want_s
        d0 = int(np.argmin(angles))  # the rotation at the nearest direction: Rz(psi)
        m = quad.direction_matrices[d0].T @ r
        psi = np.arctan2(m[1, 0], m[0, 0])
        gap = np.abs(np.angle(np.exp(1j * (quad.inplane_rad - psi))))
        assert int(np.argmin(gap)) in set(sub.inplane.tolist())
        assert np.all(sub.log_is_directions == 0) and np.all(sub.log_is_shifts == 0)


def test_aligned_snapshots_fsc_is_the_fsc_of_the_aligned_map():
    """A rotated copy of a map is brought back onto it (correlation near 1), and each
    snapshot's curve and resolution are metrics.fsc of its aligned map capped at its band
    limit."""
    n, psize = 20, 8.0
    k = np.arange(n) - n // 2
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    truth = sum(a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 4.0)
                for a, (cx, cy, cz) in zip((1.0, 0.7, 0.5, 0.9),
                                           ((4, 0, 0), (-3, 3, 1), (0, -4, 2), (1, 1, -4)),
                                           strict=True))
    rot = random_rotations(1, np.random.default_rng(4))[0]
    moved = rotate_volume(truth, rot, order=3)
    snaps = [Snapshot(sphere_volume(n, psize, 40.0, mass=truth.sum()), 0.0, 1 / 40, 0, "start"),
             Snapshot(moved, 12.0, 1 / 20, 7, "common")]
    aligned = align_snapshots(snaps, truth, psize)
    assert [a.snapshot for a in aligned] == snaps
    for a in aligned:
        curve = fsc(a.aligned, truth, psize, max_freq_invA=a.snapshot.max_freq_invA)
        np.testing.assert_allclose(a.curve.fsc, curve.fsc, equal_nan=True)
        assert a.resolution == curve.resolution(0.5)
        assert np.isnan(a.curve.fsc[a.curve.freq_invA > a.snapshot.max_freq_invA + 1e-12]).all()
    assert aligned[1].correlation > 0.97
    assert aligned[1].correlation > aligned[0].correlation


def _fake_run(n_halves=0):
    halves = [SimpleNamespace(name=f"half{h + 1}",
                              solver=SimpleNamespace(state=SimpleNamespace(elapsed_s=0.0)))
              for h in range(n_halves)]
    return SimpleNamespace(common=SimpleNamespace(state=SimpleNamespace(elapsed_s=0.0)),
                           halves=halves)


def test_recorder_keeps_the_start_the_last_map_of_each_band_limit_and_the_domains():
    """A hand-built run: three iterations at 1/40, two at 1/30, the solver records holding
    the batch's per-domain fractions 0.1, 1/3, 1 (a grid of 300 x 30 x 20 with 30, 10 and
    20 points drawn); the recorder keeps them, and a record without them gives NaN."""
    run = _fake_run()
    start = np.full((4, 4, 4), -1.0)
    solver = SimpleNamespace(initial_volume=start, volume=None)
    recorder = RunRecorder()
    domains = {"fraction_directions": 30 / 300, "fraction_inplane": 10 / 30,
               "fraction_shifts": 20 / 20}
    expected_fraction = (30 * 10 * 20) / (300 * 30 * 20)
    for it, w in enumerate([1 / 40] * 3 + [1 / 30] * 2, start=1):
        run.common.state.elapsed_s = 2.0 * it
        solver.volume = np.full((4, 4, 4), float(it))
        recorder(run, solver, {"iteration": it, "max_freq_invA": w,
                               "fraction_evaluated": expected_fraction, **domains})
    snaps = recorder.snapshots
    assert [s.phase for s in snaps] == ["start", "common", "common"]
    np.testing.assert_array_equal(snaps[0].volume, start)
    assert [s.iteration for s in snaps[1:]] == [3, 5]  # the last iteration at each band limit
    assert [float(s.volume[0, 0, 0]) for s in snaps[1:]] == [3.0, 5.0]
    assert [s.time_s for s in snaps] == [0.0, 6.0, 10.0]
    table = domain_fraction_table(recorder.rows)
    assert table.shape == (5, 10)
    np.testing.assert_allclose(table["fraction_directions"], 0.1)
    np.testing.assert_allclose(table["fraction_inplane"], 1 / 3)
    np.testing.assert_allclose(table["fraction_shifts"], 1.0)
    np.testing.assert_allclose(table["band_limit_A"], [40, 40, 40, 30, 30])
    # one image's draw: the product of its domains' fractions is its fraction of the grid
    product = table[["fraction_directions", "fraction_inplane", "fraction_shifts"]].prod(axis=1)
    np.testing.assert_allclose(product, table["fraction_evaluated"])
    old = RunRecorder()
    old(run, solver, {"iteration": 1, "max_freq_invA": 1 / 40, "fraction_evaluated": 1.0})
    assert np.isnan(domain_fraction_table(old.rows)["fraction_shifts"]).all()
    every = RunRecorder(every=2)
    for it in range(1, 6):
        solver.volume = np.full((4, 4, 4), float(it))
        every(run, solver, {"iteration": it, "max_freq_invA": 1 / 40, "fraction_evaluated": 1.0})
    assert [s.iteration for s in every.snapshots[1:]] == [2, 4, 5]


def test_history_fraction_table_orders_phases_and_adds_the_common_time(tmp_path):
    """From a history of two phases (common 2 iterations ending at 8 s, half1 2 at 3 and 5 s
    of its own time): common then half1, half1's times offset by 8 s, per-domain columns kept,
    a history without them (older runs) NaN there; read alike from a DataFrame, a .csv.gz and
    a run folder; summarised per band limit with medians and minima by hand."""
    import pandas as pd

    history = pd.DataFrame({
        "phase": ["common", "common", "half1", "half1", "half2"],
        "iteration": [0, 1, 0, 1, 0], "max_freq_invA": [0.025, 0.03, 1 / 30, 1 / 30, 1 / 30],
        "wall_time_s": [4.0, 8.0, 3.0, 5.0, 3.0],
        "fraction_evaluated": [1.0, 0.5, 0.02, 0.01, 0.03],
        "fraction_directions": [1.0, 0.5, 0.1, 0.05, 0.3],
        "fraction_inplane": [1.0, 1.0, 0.5, 0.5, 0.3], "fraction_shifts": [1.0] * 5})
    table = history_fraction_table(history)
    assert list(table["phase"]) == ["common", "common", "half1", "half1"]
    np.testing.assert_allclose(table["time_s"], [4.0, 8.0, 11.0, 13.0])
    np.testing.assert_allclose(table["fraction_directions"], [1.0, 0.5, 0.1, 0.05])
    np.testing.assert_allclose(table["band_limit_A"], [40.0, 1 / 0.03, 30.0, 30.0])
    assert list(table["step"]) == [0, 1, 2, 3]
    history.to_csv(tmp_path / "h.csv.gz", index=False)
    history.to_csv(tmp_path / "history.csv", index=False)
    for source in (tmp_path / "h.csv.gz", tmp_path, str(tmp_path / "history.csv")):
        pd.testing.assert_frame_equal(history_fraction_table(source), table)
    summary = fractions_by_band_limit(table)
    assert list(summary["phase"]) == ["common", "common", "half1"]
    assert list(summary["iterations"]) == [1, 1, 2]
    np.testing.assert_allclose(summary["all_median"], [1.0, 0.5, 0.015])
    np.testing.assert_allclose(summary["all_min"], [1.0, 0.5, 0.01])
    np.testing.assert_allclose(summary["directions_median"], [1.0, 0.5, 0.075])
    older = history_fraction_table(history.drop(columns=["fraction_directions"]))
    assert np.isnan(older["fraction_directions"]).all()
    np.testing.assert_allclose(older["fraction_evaluated"], [1.0, 0.5, 0.02, 0.01])


def test_recorder_ignores_phases_it_is_not_asked_for():
    run = _fake_run(n_halves=2)
    solver2 = run.halves[1].solver
    solver2.initial_volume, solver2.volume = None, np.zeros((2, 2, 2))
    solver2.objective = SimpleNamespace(sampler=None, likelihood=None)
    recorder = RunRecorder()
    recorder(run, solver2, {"iteration": 1, "max_freq_invA": 0.03, "fraction_evaluated": 1.0})
    assert recorder.rows == [] and recorder.snapshots == []


def test_evenly_spaced_keeps_the_ends():
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced([1, 2], 5) == [1, 2]


def test_prior_configs_differ_only_in_the_prior():
    base = AbInitioConfig(box_size=24, prior_scale=0.3, seed=5, time_limit_min=0.5)
    configs = prior_configs(base)
    assert list(configs) == ["none", "exponential", "gaussian"]
    reference = asdict(base)
    for name, config in configs.items():
        changed = {k for k, v in asdict(config).items() if v != reference[k]}
        assert changed <= {"prior"} and config.prior == name
    with pytest.raises(ValueError, match="prior"):
        prior_configs(base, ["laplace"])


def test_sphere_volume_has_its_mass_inside_its_radius():
    v = sphere_volume(24, 5.0, 30.0, mass=7.0)
    k = (np.arange(24) - 12) * 5.0
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    assert v.sum() == pytest.approx(7.0)
    assert np.all(v[r > 30.0] == 0) and np.all(v[r <= 30.0] > 0)


def test_paper_figures_draw():
    """Each figure of cryonb.viz.paper builds from the experiments' outputs."""
    from cryonb.metrics import Resolution
    from cryonb.viz.paper import (
        domain_fractions_figure,
        map_gallery_figure,
        refinement_scores_figure,
        snapshots_figure,
    )

    vol = sphere_volume(12, 10.0, 30.0)
    snap = SimpleNamespace(aligned=vol, label="start\n40 Å")
    fig = snapshots_figure([snap, snap], 10.0, truth=vol)
    assert len(fig.axes) == 6
    assert len(map_gallery_figure([vol], ["a"], 10.0, projection=False).axes) == 1
    rows = [{"step": i, "iteration": i, "phase": "common" if i < 3 else "half1",
             "max_freq_invA": 1 / 40, "time_s": i, "fraction_evaluated": 0.5,
             "fraction_directions": 0.5, "fraction_inplane": 1.0, "fraction_shifts": 1.0}
            for i in range(5)]
    assert len(domain_fractions_figure(domain_fraction_table(rows)).axes) == 2
    score = SimpleNamespace(resolution=Resolution(60.0, 0.5, True, 30.0))
    result = SimpleNamespace(scores=[None, score], start_score=None)
    fig = refinement_scores_figure({"sphere": result}, reference={"SAGD": 50.0, "none": None})
    assert len(fig.axes[0].lines) == 4  # the line, its filled markers, open markers, SAGD


def test_bundled_fig7_history_reads_as_a_fig7_table():
    """The bundled long run's history (data_samples/README.md) gives Fig. 7: the common phase
    then half 1, every fraction in (0, 1], the band limit never falling within a phase, and
    the overall fraction no larger than any domain's (a product of fractions per image)."""
    from cryonb.samples import sample_path

    table = history_fraction_table(sample_path("fig7_groel_box128_history.csv.gz"))
    assert list(dict.fromkeys(table["phase"])) == ["common", "half1"]
    cols = ["fraction_evaluated", "fraction_directions", "fraction_inplane", "fraction_shifts"]
    values = table[cols].to_numpy(float)
    assert np.isfinite(values).all() and (values > 0).all() and (values <= 1 + 1e-12).all()
    for _, part in table.groupby("phase"):
        assert (np.diff(part["max_freq_invA"].to_numpy(float)) >= 0).all()
    assert (table["fraction_evaluated"] <= table[cols[1:]].min(axis=1) + 1e-6).all()
