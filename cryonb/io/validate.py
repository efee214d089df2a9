"""Physical ranges of the optics and CTF values in particle files: the one home of the limits.

Both readers (RELION STAR, :mod:`cryonb.io.star`; cryoSPARC ``.cs``, :mod:`cryonb.io.cryosparc`)
check their columns against :data:`RANGES` and report the first value outside its range as a
:class:`~cryonb.io.errors.CryonbInputError` naming the file, the column, the table and the row.
Non-finite values are left to the readers' own "missing or non-numeric" checks.

The ranges are deliberately wide: they reject values that no microscope produces (usually a
unit mistake: V for kV, percent for a fraction, µm or nm for Å) and never a real data set.

=====================  ====================  ======================================================
quantity               allowed               why
=====================  ====================  ======================================================
voltage                60 to 1000 kV         cryo-EM runs at 100-300 kV; 60 kV is the lowest TEM
                                             setting in use, 1000 kV covers high-voltage machines
Cs                     0 to 20 mm            objective lenses have 0.5-6 mm; a Cs corrector gives
                                             about 0 (e.g. 0.001 mm); RELION and cryoSPARC never
                                             store negative Cs
amplitude contrast Q   0 <= Q < 1            a fraction (0.07-0.1 for ice, up to ~0.4 for stain);
                                             Q = 1 makes RELION's phase ``atan(Q/sqrt(1-Q^2))``
                                             infinite
defocus U and V        -20,000 to 200,000 Å  underfocus is positive (RELION); phase-plate data
                                             taken near focus can fit slightly negative
                                             (overfocus) values, so up to 2 µm of overfocus is
                                             accepted; 20 µm of underfocus is beyond any
                                             single-particle or tomography practice
pixel size             0.1 to 100 Å          super-resolution pixels are ~0.3-0.5 Å; 100 Å covers
                                             strongly binned (Fourier-cropped) teaching and test
                                             sets (22 Å per pixel: GroEL in 16 px) and still
                                             catches a size written in pm or in nm x 1000
=====================  ====================  ======================================================
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .errors import input_error

__all__ = ["CRYOSPARC_FIELDS", "RANGES", "STAR_COLUMNS", "PhysicalRange",
           "check_cryosparc_records", "check_range", "check_star_table"]


@dataclass(frozen=True)
class PhysicalRange:
    """Allowed interval of one physical quantity.

    Attributes
    ----------
    low, high : float
        Bounds in ``unit``; ``low`` is always allowed, ``high`` only if ``high_inclusive``.
    unit : str
        Unit of the bounds as written in the files ("" for a dimensionless fraction).
    hint : str
        What the value means, for the error's fix (e.g. "kV, e.g. 300").
    high_inclusive : bool
    """

    low: float
    high: float
    unit: str
    hint: str
    high_inclusive: bool = True

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of the values inside the range (non-finite values count as inside)."""
        values = np.asarray(values, dtype=np.float64)
        above = values > self.high if self.high_inclusive else values >= self.high
        return ~np.isfinite(values) | ((values >= self.low) & ~above)

    def describe(self) -> str:
        """The range as text, e.g. ``"60 to 1000 kV"`` or ``"0 <= value < 1"``."""
        unit = f" {self.unit}" if self.unit else ""
        if self.high_inclusive:
            return f"{self.low:g} to {self.high:g}{unit}"
        return f"{self.low:g} <= value < {self.high:g}{unit}"


# quantity -> allowed range (see the module docstring for the reasons)
RANGES: dict[str, PhysicalRange] = {
    "voltage": PhysicalRange(60.0, 1000.0, "kV", "the acceleration voltage in kV, e.g. 300"),
    "cs": PhysicalRange(0.0, 20.0, "mm",
                        "the spherical aberration in mm, e.g. 2.7 (about 0 with a Cs corrector)"),
    "amplitude_contrast": PhysicalRange(0.0, 1.0, "",
                                        "the amplitude contrast as a fraction, e.g. 0.1 "
                                        "(not percent)", high_inclusive=False),
    "defocus": PhysicalRange(-2.0e4, 2.0e5, "Å",
                             "the defocus in Å with underfocus positive, e.g. 15000 for 1.5 µm"),
    "pixel_size": PhysicalRange(0.1, 100.0, "Å",
                                "the pixel size of the particle images in Å, e.g. 1.06"),
}

# RELION STAR column (without the leading "_") -> quantity
STAR_COLUMNS: dict[str, str] = {
    "rlnVoltage": "voltage",
    "rlnSphericalAberration": "cs",
    "rlnAmplitudeContrast": "amplitude_contrast",
    "rlnDefocusU": "defocus",
    "rlnDefocusV": "defocus",
    "rlnImagePixelSize": "pixel_size",
    "rlnPixelSize": "pixel_size",
}

# cryoSPARC .cs field -> quantity
CRYOSPARC_FIELDS: dict[str, str] = {
    "ctf/accel_kv": "voltage",
    "ctf/cs_mm": "cs",
    "ctf/amp_contrast": "amplitude_contrast",
    "ctf/df1_A": "defocus",
    "ctf/df2_A": "defocus",
    "blob/psize_A": "pixel_size",
}


def check_range(path: str | os.PathLike, column: str, values: ArrayLike, quantity: str, *,
                where: str, row_name: str, first_row: int) -> None:
    """Raise if any finite value of ``column`` lies outside the range of ``quantity``.

    Parameters
    ----------
    path : path-like
        The file, for the message.
    column : str
        The column or field as the user sees it in the file (e.g. ``"_rlnVoltage"``).
    values : array_like, shape (n,) or (n, ...)
        The column's values in file units; non-finite ones are skipped.
    quantity : str
        A key of :data:`RANGES`.
    where : str
        The table, for the message (e.g. ``"optics table"``).
    row_name : str
        How rows are called in the message (e.g. ``"data row"``).
    first_row : int
        Number of the first row as the user counts them (1 for STAR data rows, 0 for ``.cs``).

    Raises
    ------
    CryonbInputError
        Naming the file, column, table, first offending row, its value and the allowed range.
    """
    allowed = RANGES[quantity]
    values = np.asarray(values, dtype=np.float64)
    inside = allowed.contains(values).reshape(len(values), -1).all(axis=1)
    if inside.all():
        return
    bad = np.flatnonzero(~inside)
    row = int(bad[0])
    value = values.reshape(len(values), -1)[row]
    value = value[~allowed.contains(value)][0]
    sign = " (zero or negative)" if value <= 0 < allowed.low else ""
    more = f" ({bad.size} rows in all)" if bad.size > 1 else ""
    raise input_error(path, f"{column} is {value:g}{sign} in the {where}, {row_name} "
                      f"{row + first_row}{more}, outside the physical range "
                      f"{allowed.describe()}",
                      f"correct {column}: it is {allowed.hint}")


def check_star_table(path: str | os.PathLike, table, where: str, *,
                     skip: Collection[str] = ()) -> None:
    """Check every range-checked column present in one STAR table.

    Parameters
    ----------
    path : path-like
    table : pandas.DataFrame
        One table as read by ``starfile`` (rows in file order).
    where : str
        ``"optics table"`` or ``"particles table"``; rows are counted from 1 (data rows).
    skip : collection of str
        Quantities (keys of :data:`RANGES`) not to check, e.g. ``{"pixel_size"}`` when the
        caller overrides the file's pixel size.
    """
    import pandas as pd

    for column, quantity in STAR_COLUMNS.items():
        if column in table.columns and quantity not in skip:
            values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
            check_range(path, "_" + column, values, quantity, where=where,
                        row_name="data row", first_row=1)


def check_cryosparc_records(path: str | os.PathLike, records: np.ndarray) -> None:
    """Check every range-checked field present in a ``.cs`` structured array (rows from 0)."""
    names = records.dtype.names or ()
    for field, quantity in CRYOSPARC_FIELDS.items():
        if field in names:
            check_range(path, field, np.asarray(records[field], dtype=np.float64), quantity,
                        where=".cs file", row_name="row (0-based)", first_row=0)
