"""Dataset: lazy images from real and synthetic stacks, selection, preprocessing, bad input."""

import pickle
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryonb.dataset import Dataset, GroundTruth
from cryonb.fourier import fourier_crop
from cryonb.io import CryonbInputError, write_mrc, write_particles_star

REAL = Path(__file__).parent / "data" / "real"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- real data
def test_relion31_pixel_size_from_star_not_header():
    with pytest.warns(RuntimeWarning, match=r"header pixel size 1.0000 Å differs"):
        ds = Dataset.from_star(REAL / "cryodrgn_relion31" / "relion31.star")
    assert len(ds) == 5 and ds.box_size == 256 and ds.pixel_size_A == 2.806
    with mrcfile.open(REAL / "cryodrgn_relion31" / "relion31.mrcs", permissive=True) as mrc:
        np.testing.assert_array_equal(ds.images(), mrc.data)
    assert ds.rotations.shape == (5, 3, 3) and ds.ctf.defocus_u_A[0] == 13108.082418


def test_empiar10076_star_and_cs_images_differ_by_the_contrast_sign():
    star = Dataset.from_star(REAL / "cryodrgn_empiar10076" / "empiar_10076_7.star")
    cs = Dataset.from_cryosparc(REAL / "cryodrgn_empiar10076" / "empiar_10076_7.cs")
    assert star.pixel_size_A == pytest.approx(1.309998, abs=1e-6) and star.box_size == 320
    assert cs.data_sign == -1.0
    np.testing.assert_array_equal(cs.images(), -star.images())
    np.testing.assert_array_equal(cs.inverted().images(), star.images())


def test_aspire_sample_reads_all_17_particles():
    ds = Dataset.from_star(REAL / "aspire_sample" / "sample_relion_data.star")
    assert len(ds) == 17 and ds.box_size == 200
    assert ds.pixel_size_A == pytest.approx(1.338, abs=1e-6)
    with mrcfile.open(REAL / "aspire_sample" / "sample.mrcs") as mrc:
        np.testing.assert_array_equal(ds.images([16, 0]), mrc.data[[16, 0]])


# ----------------------------------------------------------------------------- synthetic
@pytest.fixture
def two_stacks(tmp_path, defocus_ramp_ctf):
    """Two stacks; rows reference them out of order; returns (star path, expected images)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 16, 16)).astype(np.float32)
    b = rng.normal(size=(3, 16, 16)).astype(np.float32)
    (tmp_path / "stacks").mkdir()
    write_mrc(tmp_path / "stacks" / "a.mrcs", a, 1.5)
    write_mrc(tmp_path / "stacks" / "b.mrcs", b, 1.5)
    refs = [("b", 2), ("a", 4), ("a", 0), ("b", 0), ("a", 2)]
    expected = np.stack([{"a": a, "b": b}[s][i] for s, i in refs])
    star = write_particles_star(
        tmp_path / "p.star", image_paths=[str(tmp_path / "stacks" / f"{s}.mrcs") for s, _ in refs],
        image_indices=[i for _, i in refs], pixel_size_A=1.5, box_size=16,
        ctf=defocus_ramp_ctf(5))
    return star, expected


def test_rows_out_of_order_in_several_stacks(two_stacks):
    star, expected = two_stacks
    ds = Dataset.from_star(star)
    np.testing.assert_array_equal(ds.images(), expected)
    np.testing.assert_array_equal(ds.images([4, 0]), expected[[4, 0]])
    np.testing.assert_array_equal(ds.subset([3, 1]).images(), expected[[3, 1]])


def test_datadir_resolves_relative_paths(two_stacks, tmp_path):
    star, expected = two_stacks
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    text = star.read_text().replace("stacks/", "")
    (moved / "p.star").write_text(text)
    with pytest.raises(CryonbInputError, match=r"does not exist.*--datadir"):
        Dataset.from_star(moved / "p.star")
    ds = Dataset.from_star(moved / "p.star", datadir=tmp_path / "stacks")
    np.testing.assert_array_equal(ds.images(), expected)


def test_subset_halves_and_batches(two_stacks):
    star, expected = two_stacks
    ds = Dataset.from_star(star)
    with pytest.raises(ValueError, match="rng"):
        ds.halves()
    h0, h1 = ds.halves(np.random.default_rng(1))
    assert (len(h0), len(h1)) == (3, 2)
    together = np.concatenate([h0.images(), h1.images()])
    assert sorted(map(bytes, together)) == sorted(map(bytes, expected))  # a partition
    seen = []
    for batch in ds.batches(2, np.random.default_rng(2)):
        np.testing.assert_array_equal(batch.images, expected[batch.indices])
        np.testing.assert_array_equal(batch.ctf.defocus_u_A, ds.ctf.defocus_u_A[batch.indices])
        seen.extend(batch.indices.tolist())
    assert sorted(seen) == list(range(5))
    again = [b.indices.tolist() for b in ds.batches(2, np.random.default_rng(2))]
    assert [i for b in again for i in b] == seen  # same seed, same order
    assert [len(b.indices) for b in ds.batches(2, drop_last=True)] == [2, 2]


def test_dataset_pickles_without_open_files(two_stacks):
    star, expected = two_stacks
    ds = Dataset.from_star(star)
    ds.images([0])  # opens a memmap
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ds)).images(), expected)


def test_write_and_read_back(two_stacks, tmp_path):
    star, expected = two_stacks
    ds = Dataset.from_star(star).with_random_halves(np.random.default_rng(3))
    out = ds.write(tmp_path / "out" / "copy.star")
    back = Dataset.from_star(out)
    np.testing.assert_array_equal(back.images(), expected)
    np.testing.assert_array_equal(back.half_set, ds.half_set)
    np.testing.assert_allclose(back.ctf.defocus_u_A, ds.ctf.defocus_u_A)


def _blob_images(n, box, sigma, rng):
    c = np.arange(box) - box // 2
    blob = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * (box / 10) ** 2))
    offsets = rng.normal(0, 5, n)[:, None, None]
    return (10 * blob + offsets + rng.normal(0, sigma, (n, box, box))).astype(np.float32)


def test_noise_sigma_from_background_and_normalisation(defocus_ramp_ctf):
    rng = np.random.default_rng(4)
    ds = Dataset.from_arrays(_blob_images(200, 64, 2.0, rng), 2.0, ctf=defocus_ramp_ctf(200))
    sigma = ds.estimate_noise_sigma()
    assert sigma == pytest.approx(2.0, rel=0.02)
    normal = ds.normalized()
    images = normal.images()
    c = np.arange(64) - 32
    background = (c[:, None] ** 2 + c[None, :] ** 2) >= 32**2
    np.testing.assert_allclose(images[:, background].mean(axis=1), 0.0, atol=1e-5)
    assert images[:, background].std() == pytest.approx(1.0, rel=0.01)
    assert normal.estimate_noise_sigma() == pytest.approx(1.0, rel=1e-3)


def test_fourier_crop_scales_pixel_size_and_noise():
    rng = np.random.default_rng(5)
    noise = Dataset.from_arrays(rng.normal(0, 1.0, (50, 64, 64)).astype(np.float32), 1.4)
    small = noise.fourier_cropped(32)
    assert small.box_size == 32 and small.pixel_size_A == pytest.approx(2.8)
    images = small.images()
    assert images.shape == (50, 32, 32)
    # the mean-preserving crop averages (64/32)^2 pixels' worth of white noise (sigma * 32/64),
    # and zeroing the unpaired Nyquist row and column keeps 31^2 of 32^2 coefficients
    assert images.std() == pytest.approx(0.5 * 31 / 32, rel=0.01)
    np.testing.assert_allclose(images, fourier_crop(noise.images(), 32), atol=1e-6)


def test_ground_truth_follows_subsets():
    rng = np.random.default_rng(6)
    rot = np.tile(np.eye(3), (4, 1, 1)) * np.arange(1, 5)[:, None, None]
    ds = Dataset.from_arrays(rng.normal(size=(4, 8, 8)), 1.0).with_truth(
        GroundTruth(volume=np.zeros((8, 8, 8)), volume_pixel_size_A=1.0, rotations=rot))
    np.testing.assert_array_equal(ds.subset([3, 1]).truth.rotations, rot[[3, 1]])
    with pytest.raises(ValueError, match=r"truth.rotations"):
        ds.subset([0]).with_truth(GroundTruth(rotations=rot))


# ----------------------------------------------------------------------------- bad input
def _star(tmp_path, n_rows, stack_name="s.mrcs", image_size=16, **particle_columns):
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g"], "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
        "rlnImagePixelSize": [1.5], "rlnImageSize": [image_size], "rlnImageDimensionality": [2],
        **{k: [v] for k, v in particle_columns.pop("optics", {}).items()}})
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1}@{stack_name}" for i in range(n_rows)],
        "rlnOpticsGroup": 1, "rlnDefocusU": 1e4, "rlnDefocusV": 1e4, "rlnDefocusAngle": 0.0,
        **particle_columns})
    path = tmp_path / "p.star"
    starfile.write({"optics": optics, "particles": particles}, path)
    return path


def test_rows_past_the_end_of_the_stack(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((3, 16, 16)), 1.5)
    with pytest.raises(CryonbInputError, match=r"row 4 refers to image 4 .* only 3 images") as e:
        Dataset.from_star(_star(tmp_path, 4))
    assert "p.star" in str(e.value)


def test_non_square_images(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((2, 16, 18)), 1.5)
    with pytest.raises(CryonbInputError, match="not square") as e:
        Dataset.from_star(_star(tmp_path, 2))
    assert "s.mrcs" in str(e.value)


def test_wrong_box_size(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((2, 16, 16)), 1.5)
    with pytest.raises(CryonbInputError, match="say 32 px images but the stacks hold 16"):
        Dataset.from_star(_star(tmp_path, 2, image_size=32))


def test_nan_pixels_name_the_stack_and_image(tmp_path):
    stack = np.zeros((3, 16, 16), dtype=np.float32)
    stack[1, 4, 4] = np.nan
    write_mrc(tmp_path / "s.mrcs", stack, 1.5)
    ds = Dataset.from_star(_star(tmp_path, 3))
    np.testing.assert_array_equal(ds.images([0, 2]), 0.0)
    with pytest.raises(CryonbInputError, match=r"s.mrcs image 2 \(1-based\) has NaN"):
        ds.validate()


def test_missing_ctf_and_premultiplied(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((2, 16, 16)), 1.5)
    path = tmp_path / "noctf.star"
    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["1@s.mrcs", "2@s.mrcs"],
                                               "rlnImagePixelSize": [1.5, 1.5]})}, path)
    with pytest.raises(CryonbInputError, match=r"no CTF columns.*require_ctf=False"):
        Dataset.from_star(path)
    assert Dataset.from_star(path, require_ctf=False).ctf is None
    premult = _star(tmp_path, 2, optics={"rlnCtfDataAreCtfPremultiplied": 1})
    with pytest.raises(CryonbInputError, match="premultiplication"):
        Dataset.from_star(premult)


def test_truncated_stack_named_when_opening_the_star(tmp_path):
    path = write_mrc(tmp_path / "s.mrcs", np.zeros((3, 16, 16)), 1.5)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 100)
    with pytest.raises(CryonbInputError, match=r"s.mrcs: the file is truncated"):
        _quiet(Dataset.from_star, _star(tmp_path, 3))
