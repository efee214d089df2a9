"""A finished run folder read back for the views (:func:`open_run`), and two maps brought to
one grid (:func:`common_grid`).

The folder is what ``cryonb reconstruct`` (:class:`cryonb.abinitio.AbInitioRun`) writes,
listed in :mod:`cryonb.run_folder`: ``map.mrc``, the gold-standard half-maps ``half1.mrc`` /
``half2.mrc``, SAGD's half-set maps ``sagd_half1.mrc`` / ``sagd_half2.mrc``, ``run.json``,
``history.csv``, ``fsc.csv`` and ``particles.star`` (MAP poses).  Missing files are None;
the reading is plain library calls (:func:`cryonb.io.read_mrc`,
:meth:`cryonb.dataset.Dataset.from_star`, :func:`cryonb.metrics.fsc`) and involves no widget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["FinishedRun", "common_grid", "open_run"]

#: FSC pairs a run folder may hold: (label, first map, second map).
FSC_PAIRS = (("gold standard: half1 / half2", "half1", "half2"),
             ("SAGD half-sets: sagd_half1 / sagd_half2", "sagd_half1", "sagd_half2"))


@dataclass
class FinishedRun:
    """The outputs of one run (see the module docstring); arrays in memory, float32.

    Attributes
    ----------
    path : Path
    summary : dict (``run.json``; empty without one)
    pixel_size_A : float (of ``map.mrc``)
    maps : dict of name -> (N, N, N) ``[z, y, x]``: ``"map"`` and whichever of ``half1``,
        ``half2``, ``sagd_half1``, ``sagd_half2``, ``map_from_halves`` exist
    history : pandas DataFrame (``history.csv``) or None
    """

    path: Path
    summary: dict[str, Any]
    pixel_size_A: float
    maps: dict[str, NDArray]
    history: Any = None
    _particles: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The folder's name."""
        return self.path.name

    @property
    def map(self) -> NDArray:
        """``map.mrc``."""
        return self.maps["map"]

    @property
    def box_size(self) -> int:
        return int(self.map.shape[0])

    @property
    def band_limit_invA(self) -> float | None:
        """The band limit the maps were fitted to (``final_max_freq_invA``; the split's when
        the halves fitted none), 1/Å; None when ``run.json`` has neither."""
        s = self.summary
        w = s.get("final_max_freq_invA") or s.get("split_max_freq_invA")
        return None if w is None else float(w)

    def fsc_pairs(self) -> list[tuple[str, str, str]]:
        """The FSC pairs whose two maps are in the folder."""
        return [p for p in FSC_PAIRS if p[1] in self.maps and p[2] in self.maps]

    def fsc(self, first: str = "half1", second: str = "half2") -> Any:
        """:func:`cryonb.metrics.fsc` of two of the maps, capped at :attr:`band_limit_invA`."""
        from ..metrics import fsc

        return fsc(self.maps[first], self.maps[second], self.pixel_size_A,
                   max_freq_invA=self.band_limit_invA)

    def particles(self) -> Any:
        """The particles of ``particles.star`` with their MAP poses (a lazy
        :class:`~cryonb.dataset.Dataset` at the original box; read once)."""
        if self._particles is None:
            from ..dataset import Dataset

            star = self.path / "particles.star"
            if not star.exists():
                raise FileNotFoundError(f"{star}: no particles.star in the run folder")
            self._particles = Dataset.from_star(star)
        return self._particles

    def summary_lines(self) -> list[str]:
        """The resolution statements of ``run.json`` (:func:`cryonb.run_folder.summary_lines`)."""
        from ..run_folder import summary_lines

        if "half_map_resolution" not in self.summary and "half_map_null_reason" not in \
                self.summary:
            return []
        return summary_lines(self.summary)


def open_run(path: str | Path | FinishedRun) -> FinishedRun:
    """Read a run folder (``map.mrc`` is required, every other file optional)."""
    from ..io import read_mrc

    if isinstance(path, FinishedRun):
        return path
    folder = Path(path)
    if not (folder / "map.mrc").exists():
        raise FileNotFoundError(f"{folder}: no map.mrc; give the --out folder of a finished "
                                "`cryonb reconstruct`")
    main = read_mrc(folder / "map.mrc", mmap=False)
    psize = float(main.voxel_size_A or 1.0)
    maps = {"map": np.asarray(main.data, dtype=np.float32)}
    for name in ("half1", "half2", "sagd_half1", "sagd_half2", "map_from_halves"):
        f = folder / f"{name}.mrc"
        if f.exists():
            data = np.asarray(read_mrc(f, mmap=False).data, dtype=np.float32)
            if data.shape == maps["map"].shape:
                maps[name] = data
    summary = {}
    if (folder / "run.json").exists():
        summary = json.loads((folder / "run.json").read_text())
    history = None
    if (folder / "history.csv").exists():
        import pandas as pd

        history = pd.read_csv(folder / "history.csv")
    return FinishedRun(folder, summary, psize, maps, history)


def common_grid(a: NDArray, pixel_a_A: float, b: NDArray, pixel_b_A: float
                ) -> tuple[NDArray, NDArray, float]:
    """Two cubic maps on one grid: ``(a, b, pixel_size_A)``.

    Same pixel size, other boxes: the larger is cropped about its centre (real space).  Same
    field of view (``N * pixel``), other pixel sizes: the finer is Fourier-cropped.  Anything
    else raises ``ValueError``.
    """
    from ..fourier import crop_center, fourier_crop

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = a.shape[0], b.shape[0]
    if abs(pixel_a_A - pixel_b_A) <= 1e-3 * pixel_a_A:
        n = min(na, nb)
        return (crop_center(a, n, ndim=3) if na > n else a,
                crop_center(b, n, ndim=3) if nb > n else b, float(pixel_a_A))
    if abs(na * pixel_a_A - nb * pixel_b_A) <= 1e-3 * na * pixel_a_A:
        if na > nb:
            return fourier_crop(a, nb, ndim=3), b, float(pixel_b_A)
        return a, fourier_crop(b, na, ndim=3), float(pixel_a_A)
    raise ValueError(f"maps of {na} px at {pixel_a_A:.4g} Å and {nb} px at {pixel_b_A:.4g} Å "
                     "share neither pixel size nor field of view: resample one first "
                     "(cryonb.fourier.fourier_crop / fourier_pad)")
