"""Out-of-core streaming: prefetched minibatches equal direct reads, errors surface, memory stays
bounded by the batch, the solver gives the same result with and without prefetching, and the
importance-sampling state per particle does not depend on the quadrature size."""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cryonb.ctf import CTFParams
from cryonb.dataset import Dataset
from cryonb.fourier import fourier_crop
from cryonb.image_model import ImageModel
from cryonb.importance import ImportanceSampler, ISSchedule
from cryonb.io import CryonbInputError, MrcStackWriter, write_mrc, write_particles_star
from cryonb.objective import MarginalObjective, QuadratureOptions
from cryonb.rotations import random_rotations
from cryonb.sagd import SAGDParams, SAGDSolver, random_spheres
from cryonb.streaming import Prefetcher, prefetch_batches


def _ctf(n):
    return CTFParams(defocus_u_A=np.linspace(1e4, 2e4, n), defocus_v_A=np.linspace(1e4, 2e4, n),
                     defocus_angle_deg=0.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)


def _write_shuffled(tmp_path: Path, stacks: list[np.ndarray], rng: np.random.Generator,
                    pixel_size_A: float = 2.0, ctf: CTFParams | None = None
                    ) -> tuple[Path, np.ndarray]:
    """Write ``stacks`` as .mrcs files and a STAR file whose rows visit every image once in a
    random order across the stacks; returns the STAR path and the images in row order.
    ``ctf``: one entry per image of the concatenated stacks (reordered with the rows)."""
    refs = [(s, i) for s, stack in enumerate(stacks) for i in range(len(stack))]
    perm = rng.permutation(len(refs))
    refs = [refs[k] for k in perm]
    paths = []
    for s, stack in enumerate(stacks):
        paths.append(write_mrc(tmp_path / f"stack{s}.mrcs", stack, pixel_size_A))
    expected = np.stack([stacks[s][i] for s, i in refs])
    star = write_particles_star(
        tmp_path / "particles.star", image_paths=[str(paths[s]) for s, _ in refs],
        image_indices=[i for _, i in refs], pixel_size_A=pixel_size_A,
        box_size=stacks[0].shape[-1], ctf=_ctf(len(refs)) if ctf is None else ctf.subset(perm))
    return star, expected


@pytest.fixture
def three_stacks(tmp_path):
    rng = np.random.default_rng(0)
    stacks = [rng.normal(size=(n, 16, 16)).astype(np.float32) for n in (11, 7, 13)]
    return _write_shuffled(tmp_path, stacks, rng)


# ----------------------------------------------------------------------------- equality
def test_prefetched_batches_equal_direct_reads_in_order(three_stacks):
    star, expected = three_stacks
    ds = Dataset.from_star(star).fourier_cropped(12)
    truth = fourier_crop(expected, 12)  # the raw pixels written, cropped independently
    order = np.random.default_rng(7).permutation(len(ds))
    for depth in (0, 1, 3):
        batches = list(ds.batches(5, np.random.default_rng(7), prefetch=depth))
        assert [len(b.indices) for b in batches] == [5] * 6 + [1]
        np.testing.assert_array_equal(np.concatenate([b.indices for b in batches]), order)
        for b in batches:
            np.testing.assert_allclose(b.images, truth[b.indices], rtol=0, atol=1e-5)
            np.testing.assert_array_equal(b.ctf.defocus_u_A, ds.ctf.defocus_u_A[b.indices])
    # whole-set reads (long runs of consecutive images) and repeated rows
    np.testing.assert_allclose(ds.images(), truth, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(Dataset.from_star(star).images([4, 4, 0, 4]),
                                  expected[[4, 4, 0, 4]])
    # the same function, another thread: bit-identical to reading directly
    direct = [ds.batch(b) for b in np.array_split(order, 4)]
    streamed = list(prefetch_batches(ds, np.array_split(order, 4), depth=2))
    for d, s in zip(direct, streamed, strict=True):
        np.testing.assert_array_equal(d.images, s.images)
        np.testing.assert_array_equal(d.indices, s.indices)


def test_prefetcher_request_and_get(three_stacks):
    star, expected = three_stacks
    ds = Dataset.from_star(star)
    threads = {}

    def read(idx):
        threads.setdefault(tuple(idx.tolist()), []).append(threading.get_ident())
        return ds.images(idx)

    with Prefetcher(read, capacity=2) as p:
        p.request([3, 1, 4])
        p.request([1, 5])
        np.testing.assert_array_equal(p.get([2, 7]), expected[[2, 7]])  # never requested
        np.testing.assert_array_equal(p.get([1, 5]), expected[[1, 5]])  # out of order is fine
        np.testing.assert_array_equal(p.get([3, 1, 4]), expected[[3, 1, 4]])
        assert (p.hits, p.misses) == (2, 1)
        p.request([0])
        p.request([6])
        p.request([8])  # over capacity: the request for [0] is dropped
        np.testing.assert_array_equal(p.get([0]), expected[[0]])
        assert (p.hits, p.misses) == (2, 2)
    main = threading.get_ident()
    assert threads[(2, 7)] == [main] and threads[(0,)][-1] == main  # read directly
    assert main not in threads[(1, 5)] + threads[(3, 1, 4)]  # read in the background


# ----------------------------------------------------------------------------- errors
def test_a_read_error_in_the_background_reaches_the_caller_at_its_batch(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(20, 16, 16)).astype(np.float32)
    stack[13, 4, 4] = np.nan
    star = write_particles_star(
        tmp_path / "p.star", image_paths=[str(write_mrc(tmp_path / "s.mrcs", stack, 2.0))] * 20,
        image_indices=np.arange(20), pixel_size_A=2.0, box_size=16, ctf=_ctf(20))
    ds = Dataset.from_star(star)
    seen = []
    with pytest.raises(CryonbInputError, match=r"s\.mrcs image 14 \(1-based\) has NaN"):
        for batch in ds.batches(4, prefetch=2):  # batch 3 (images 12-15) is read ahead
            seen.append(batch.indices[0])
    assert seen == [0, 4, 8]
    # a stack cut short after it was opened: the reader thread's error names the file
    path = tmp_path / "s.mrcs"
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 12 * 16 * 16 * 4)  # 8 images left
    with pytest.raises(CryonbInputError, match=r"s\.mrcs.*the file ended at byte"):
        list(ds.subset(np.arange(12)).batches(4, prefetch=1))  # the NaN image is not read
    assert len(next(ds.batches(4, prefetch=1)).indices) == 4  # the start is still readable

    def failing(idx):
        raise OSError(f"disk gone while reading {idx.tolist()}")

    p = Prefetcher(failing)
    p.request([1, 2])
    with pytest.raises(OSError, match=r"disk gone while reading \[1, 2\]"):
        p.get([1, 2])
    p.close()


# ----------------------------------------------------------------------------- solver
def _abinitio_problem(tmp_path: Path, n: int = 48, box: int = 16, psize: float = 6.0):
    rng = np.random.default_rng(3)
    truth = random_spheres(box, rng, n_spheres=5, mass=150.0)
    model = ImageModel(box, psize)
    rot = random_rotations(n, rng)
    ctf = _ctf(n)
    clean = model.forward(truth, rot, None, ctf)
    images = (clean + rng.normal(0, 0.5 * clean.std(), clean.shape)).astype(np.float32)
    star, _ = _write_shuffled(tmp_path, [images[: n // 2], images[n // 2:]], rng,
                              pixel_size_A=psize, ctf=ctf)
    return Dataset.from_star(star)


def test_solver_gives_identical_results_with_and_without_prefetch(tmp_path):
    ds = _abinitio_problem(tmp_path)
    params = SAGDParams(batch_size=8, n_heldout=8, start_max_freq_invA=1 / 40,
                        target_max_freq_invA=1 / 30, freq_step_invA=1 / 120,
                        iterations_per_stage=4, max_iterations=8, linesearch_every=3,
                        heldout_every=4)
    runs = []
    for prefetch in (True, False):
        objective = MarginalObjective(
            ds, 1.0, rng=np.random.default_rng(4), prefetch=prefetch,
            sampler=ImportanceSampler(len(ds), ISSchedule.constant(0.3, 1.0), ess_scale=2.0),
            quadrature=QuadratureOptions(particle_radius_A=40.0, shift_sigma_A=None,
                                         shift_extent_A=0.0))
        solver = SAGDSolver(objective, n_images=len(ds), box_size=ds.box_size, params=params,
                            rng=np.random.default_rng(5), initial_mass=150.0)
        solver.run(progress=False)
        runs.append((solver, objective))
    (a, obj_a), (b, obj_b) = runs
    # 5 training batches: every step but the last of each epoch announces the next batch, so
    # steps 1..7 but 5 find their images read ahead
    assert a.n_batches == 5 and obj_a.prefetcher.hits == 6
    assert obj_b.prefetcher is None
    np.testing.assert_array_equal(a.volume, b.volume)
    assert len(a.state.records) == len(b.state.records) == 8
    for ra, rb in zip(a.state.records, b.state.records, strict=True):  # NaN-aware equality
        # wall times and the per-phase timings (t_*_s) differ from run to run
        np.testing.assert_equal(
            {k: v for k, v in ra.items() if k != "wall_time_s" and not k.startswith("t_")},
            {k: v for k, v in rb.items() if k != "wall_time_s" and not k.startswith("t_")})
    assert min(r["fraction_evaluated"] for r in a.state.records) < 1.0  # IS was on
    for key, value in obj_a.sampler.state_dict().items():
        np.testing.assert_array_equal(value, obj_b.sampler.state_dict()[key])


# ----------------------------------------------------------------------------- memory
def _rss_kB(kind: str = "RssFile") -> int | None:
    """This process's resident memory of one kind (Linux ``/proc/self/status``), kB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(kind + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def test_streaming_memory_is_bounded_by_the_batch(tmp_path):
    """A 34 MB stack streamed in 16-image batches, cropped 64 -> 32 px: the traced (Python and
    NumPy) peak stays within one batch's FFT working set, and the file-backed resident memory
    has not grown by the stack after a pass (pixels are read with file reads; through a memory
    map every page read would stay resident in the process, as the normalisation's 200-image
    sample alone did with read-around)."""
    n, box, batch = 2048, 64, 16
    stack_bytes = n * box * box * 4
    batch_bytes = batch * box * box * 4  # 262 kB raw float32
    chunk = np.random.default_rng(2).standard_normal((256, box, box), dtype=np.float32)
    with MrcStackWriter(tmp_path / "big.mrcs", n, box, 2.0) as writer:
        for start in range(0, n, 256):
            writer.write(start, chunk + np.float32(start))
    star = write_particles_star(
        tmp_path / "big.star", image_paths=[str(tmp_path / "big.mrcs")] * n,
        image_indices=np.arange(n), pixel_size_A=2.0, box_size=box, ctf=_ctf(n))
    raw = Dataset.from_star(star)  # headers only
    warm = Dataset.from_arrays(chunk[:batch], 2.0).normalized().fourier_cropped(32)
    next(warm.batches(batch, prefetch=1))  # warm-up (imports, FFT plans, threads)
    file_before = _rss_kB("RssFile")  # before any pixel of the stack is read
    ds = raw.normalized(n_images=200).fourier_cropped(32)
    total = sum(len(b.indices) for b in ds.batches(batch, np.random.default_rng(0), prefetch=1))
    file_after = _rss_kB("RssFile")
    tracemalloc.start()
    try:
        for b in ds.batches(batch, np.random.default_rng(1), prefetch=1):
            total += len(b.indices)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 2 * n
    # measured ~15 raw batches: the raw read, its complex128 FFT (4x the float32 bytes) and
    # the shifted / cropped copies of one batch, plus the batch the caller holds
    assert peak < 20 * batch_bytes, peak / batch_bytes
    assert peak < stack_bytes / 6
    if file_before is not None and file_after is not None:  # Linux
        # measured: +0.25 MB with file reads, +33 MB (the whole stack) through a memory map
        assert (file_after - file_before) * 1024 < stack_bytes / 4, file_after - file_before


def test_importance_state_per_particle_does_not_depend_on_the_quadrature(tmp_path):
    """Posteriors recorded by the objective at two band limits whose quadratures differ ~7x in
    size: the stored arrays (what a checkpoint holds) have the same size, the formula's."""
    ds = _abinitio_problem(tmp_path, n=12)
    sizes, stored = [], []
    for w in (1 / 40, 1 / 20):
        sampler = ImportanceSampler(len(ds), ISSchedule.constant(1.0))
        objective = MarginalObjective(ds, 1.0, rng=np.random.default_rng(0), sampler=sampler,
                                      quadrature=QuadratureOptions(particle_radius_A=40.0))
        objective.set_band_limit(w)
        objective.evaluate(random_spheres(ds.box_size, np.random.default_rng(1)),
                           np.arange(len(ds)), gradient=False, record=True)
        assert sampler.seen(np.arange(len(ds))).all()
        sizes.append(objective.likelihood.quadrature.size)
        stored.append(sum(v.nbytes for k, v in sampler.state_dict().items()
                          if k != "band_limits"))
    assert sizes[1] > 5 * sizes[0], sizes
    per_particle = 2 + sum(8 * k + 4 for k in (128, 32, 64))  # int16 grid id; int32+float32 x K
    assert stored == [len(ds) * per_particle] * 2
    assert sampler.bytes_per_particle == per_particle == 1806
