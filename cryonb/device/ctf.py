"""RELION's CTF evaluated on the device (array API); the formula of :mod:`cryonb.ctf`.

The per-particle constants (wavelength, Cs in Å, amplitude-contrast phase, ...) are host
metadata of length ``n`` and are computed in NumPy; only the frequency-dependent part, of
size ``n x M``, runs in the namespace of the frequencies.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..ctf import CTFParams, electron_wavelength_A
from .namespace import namespace_of, to_namespace

__all__ = ["evaluate_ctf"]


def evaluate_ctf(
    params: CTFParams,
    kx_invA: Any,
    ky_invA: Any,
    *,
    convention: Literal["relion", "ctffind"] = "relion",
) -> Any:
    """CTF of every particle at the frequencies ``(kx, ky)``, in their namespace.

    Parameters
    ----------
    params : CTFParams, length n
    kx_invA, ky_invA : (M,) float arrays of one array-API namespace, frequencies in 1/Å
        (x along columns, y along rows)
    convention : ``"relion"`` (CTF(0) = +Q, white particles) or ``"ctffind"`` (negated)

    Returns
    -------
    (n, M) array of the dtype of ``kx_invA``
    """
    if convention not in ("relion", "ctffind"):
        raise ValueError(f"unknown CTF convention {convention!r}; use 'relion' or 'ctffind'")
    xp = namespace_of(kx_invA, ky_invA)
    dtype = kx_invA.dtype
    q = params.amplitude_contrast
    lam = electron_wavelength_A(params.voltage_kV)
    du, dv = params.defocus_u_A, params.defocus_v_A
    # per-particle constants on the host, as (n, 1) columns on the device
    host = {
        "mean_defocus": 0.5 * (du + dv),
        "half_astig": 0.5 * (du - dv),
        "theta_ast": np.deg2rad(params.defocus_angle_deg),
        "c2": -np.pi * lam,                                            # times defocus k^2
        "c4": 0.5 * np.pi * params.cs_mm * 1e7 * lam**3,               # times k^4
        "phase": np.deg2rad(params.phase_shift_deg) + np.arctan(q / np.sqrt(1.0 - q * q)),
        "b4": params.bfactor_A2 / 4.0,
        "amp": params.scale * (1.0 if convention == "relion" else -1.0),
    }
    col = {k: to_namespace(xp, v[:, None], dtype=dtype) for k, v in host.items()}
    kx, ky = kx_invA[None, :], ky_invA[None, :]
    k2 = kx * kx + ky * ky
    defocus = col["mean_defocus"] + col["half_astig"] * xp.cos(
        2.0 * (xp.atan2(ky, kx) - col["theta_ast"]))
    gamma = col["c2"] * defocus * k2 + col["c4"] * k2 * k2 - col["phase"]
    return -xp.sin(gamma) * xp.exp(-col["b4"] * k2) * col["amp"]
