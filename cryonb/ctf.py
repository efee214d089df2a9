"""Contrast transfer function with RELION's formula, constants and sign.

RELION convention (``src/ctf.cpp``)::

    lambda [Å] = 12.2643247 / sqrt(V * (1 + 0.978466e-6 * V))          V in volts
    dfz(theta) = (U + V_)/2 + (U - V_)/2 * cos(2 (theta - theta_ast))    theta = atan2(ky, kx)
    gamma(k)   = -pi lambda dfz k^2 + (pi/2) Cs lambda^3 k^4 - phi - atan(Q / sqrt(1 - Q^2))
    CTF(k)     = -sin(gamma) * exp(-B k^2 / 4) * scale                   so CTF(0) = +Q

with ``k`` in 1/Å, defocus in Å (underfocus positive), ``Cs`` in Å (mm x 1e7), the
astigmatism angle ``theta_ast`` in degrees from +x (columns) towards +y (rows), the phase
shift ``phi`` and the B-factor ``B`` in Å^2.  Positive density gives a positive
low-frequency image ("white" particles).  ``convention="ctffind"`` returns the opposite sign
(CTFFIND, cisTEM, cryoDRGN, ASPIRE).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .backend import Backend, get_backend

__all__ = ["CTFParams", "electron_wavelength_A", "evaluate_ctf"]


def electron_wavelength_A(voltage_kV: ArrayLike) -> NDArray:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV (RELION constants).

    ``12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` with V in volts: 0.0250795 Å at 200 kV and
    0.0196876 Å at 300 kV.
    """
    volts = np.asarray(voltage_kV, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def _as_1d(value: ArrayLike) -> NDArray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1:
        raise ValueError(f"CTF parameters must be scalars or 1D arrays, got shape {arr.shape}")
    return arr


@dataclass(frozen=True, eq=False)
class CTFParams:
    """Per-particle CTF parameters (RELION units), each a 1D float64 array of length n.

    Scalars broadcast to the common length.  Use :meth:`subset` to select particles.

    Attributes
    ----------
    defocus_u_A, defocus_v_A : (n,) Å, underfocus positive (``_rlnDefocusU/V``)
    defocus_angle_deg : (n,) degrees, from +x towards +y (``_rlnDefocusAngle``)
    voltage_kV : (n,) kV (``_rlnVoltage``)
    cs_mm : (n,) mm (``_rlnSphericalAberration``)
    amplitude_contrast : (n,) fraction in [0, 1) (``_rlnAmplitudeContrast``)
    phase_shift_deg : (n,) degrees (``_rlnPhaseShift``), default 0
    bfactor_A2 : (n,) Å^2 (``_rlnCtfBfactor``), default 0
    scale : (n,) (``_rlnCtfScalefactor``), default 1
    """

    defocus_u_A: NDArray
    defocus_v_A: NDArray
    defocus_angle_deg: NDArray
    voltage_kV: NDArray
    cs_mm: NDArray
    amplitude_contrast: NDArray
    phase_shift_deg: NDArray = 0.0  # type: ignore[assignment]
    bfactor_A2: NDArray = 0.0  # type: ignore[assignment]
    scale: NDArray = 1.0  # type: ignore[assignment]

    def __post_init__(self) -> None:
        arrays = {f.name: _as_1d(getattr(self, f.name)) for f in fields(self)}
        n = max(a.shape[0] for a in arrays.values())
        for name, arr in arrays.items():
            if arr.shape[0] not in (1, n):
                raise ValueError(f"CTF parameter {name} has length {arr.shape[0]}, expected {n}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"CTF parameter {name} contains NaN or infinite values")
            object.__setattr__(self, name, np.broadcast_to(arr, (n,)).copy())
        q = self.amplitude_contrast
        if np.any((q < 0) | (q >= 1)):
            raise ValueError("amplitude_contrast must lie in [0, 1)")
        if np.any(self.voltage_kV <= 0):
            raise ValueError("voltage_kV must be positive")

    def __len__(self) -> int:
        return int(self.defocus_u_A.shape[0])

    def subset(self, index: ArrayLike) -> CTFParams:
        """The parameters of the particles selected by ``index`` (int array, slice or mask)."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def as_dict(self) -> dict[str, NDArray]:
        """Field name -> array."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def concatenate(parts: list[CTFParams]) -> CTFParams:
        """Join several parameter sets end to end."""
        return CTFParams(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts])
               for f in fields(CTFParams)}
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CTFParams):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
        )

    __hash__ = None  # type: ignore[assignment]


def evaluate_ctf(
    params: CTFParams,
    kx_invA: Any,
    ky_invA: Any,
    *,
    convention: Literal["relion", "ctffind"] = "relion",
    backend: Backend | str | None = None,
    dtype: Any = np.float64,
) -> Any:
    """Evaluate the CTF of every particle at the given frequencies.

    Parameters
    ----------
    params : CTFParams, length n
    kx_invA, ky_invA : arrays of identical shape S
        Frequencies in 1/Å (x along columns, y along rows), e.g. from
        :func:`cryonb.fourier.frequency_grid_2d` with a pixel size, or a list of points.
    convention : {"relion", "ctffind"}
        ``"relion"`` gives CTF(0) = +Q (white particles); ``"ctffind"`` its negative.
    backend : the array backend of the output

    Returns
    -------
    array, shape (n, *S)
    """
    bk = get_backend(backend)
    xp = bk.xp
    kx = xp.asarray(kx_invA, dtype=np.float64)
    ky = xp.asarray(ky_invA, dtype=np.float64)
    extra = (None,) * kx.ndim

    def col(a: NDArray) -> Any:
        return xp.asarray(a)[(slice(None), *extra)]

    lam = col(electron_wavelength_A(params.voltage_kV))
    cs_A = col(params.cs_mm * 1e7)
    q = col(params.amplitude_contrast)
    k2 = (kx * kx + ky * ky)[None]
    angle = xp.arctan2(ky, kx)[None]
    theta_ast = col(np.deg2rad(params.defocus_angle_deg))
    du, dv = col(params.defocus_u_A), col(params.defocus_v_A)
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * xp.cos(2.0 * (angle - theta_ast))
    gamma = (
        -np.pi * lam * defocus * k2
        + 0.5 * np.pi * cs_A * lam**3 * k2 * k2
        - col(np.deg2rad(params.phase_shift_deg))
        - xp.arctan(q / xp.sqrt(1.0 - q * q))
    )
    ctf = -xp.sin(gamma) * xp.exp(-col(params.bfactor_A2) * k2 / 4.0) * col(params.scale)
    if convention == "ctffind":
        ctf = -ctf
    elif convention != "relion":
        raise ValueError(f"unknown CTF convention {convention!r}; use 'relion' or 'ctffind'")
    return ctf.astype(dtype, copy=False)
