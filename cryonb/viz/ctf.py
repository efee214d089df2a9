"""Pictures of the contrast transfer function."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..ctf import CTFParams, evaluate_ctf
from ..fourier import nyquist_invA

__all__ = ["ctf_figure", "ctf_image", "ctf_zeros_invA"]


def ctf_zeros_invA(ctf: CTFParams, angle_deg: float, max_freq_invA: float,
                   n_samples: int = 4000) -> np.ndarray:
    """Frequencies (1/Å) of the CTF's zeros along direction ``angle_deg`` (first particle).

    Found as sign changes on a fine 1D grid, refined linearly.
    """
    k = np.linspace(0.0, max_freq_invA, n_samples)
    a = np.deg2rad(angle_deg)
    values = evaluate_ctf(ctf.subset([0]), k * np.cos(a), k * np.sin(a))[0]
    i = np.flatnonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)
    return k[i] - values[i] * (k[i + 1] - k[i]) / (values[i + 1] - values[i])


def ctf_image(ctf: CTFParams, pixel_size_A: float, n_samples: int = 512
              ) -> tuple[np.ndarray, float]:
    """The first particle's CTF in 2D, sampled finely enough to show its rings.

    ``n_samples`` points per axis span ``-Nyquist .. Nyquist`` (not the box's own grid: near
    the corners the rings of a large defocus are narrower than one Fourier pixel of the box
    and would alias into false patterns); outside the Nyquist circle the values are NaN
    (no image frequency lies there).

    Returns
    -------
    image : (n_samples, n_samples) CTF values, ``[ky, kx]``, zero frequency at the centre
    nyquist_invA : float
    """
    nyquist = nyquist_invA(pixel_size_A)
    k = np.linspace(-nyquist, nyquist, int(n_samples))
    kx, ky = np.meshgrid(k, k)
    image = evaluate_ctf(ctf.subset([0]), kx, ky)[0]
    return np.where(kx**2 + ky**2 <= nyquist**2, image, np.nan), nyquist


def ctf_figure(ctf: CTFParams, box_size: int, pixel_size_A: float) -> Figure:
    """The first particle's CTF: 1D along the U and V axes with its zeros, and in 2D.

    The 1D curves run along the defocus-U direction (``defocus_angle_deg``) and the V
    direction (90° from it), from 0 to Nyquist; grey ticks mark the zeros along U.  The 2D
    picture is :func:`ctf_image` (finely sampled, inside the Nyquist circle; ``box_size``
    only names the images' box in its title).  Defoci in µm.
    """
    one = ctf.subset([0])
    nyquist = nyquist_invA(pixel_size_A)
    k = np.linspace(0.0, nyquist, 1000)
    fig = Figure(figsize=(9.0, 3.0), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[2.2, 1])
    for offset, name, style in ((0.0, "along U", "-"), (90.0, "along V", "--")):
        a = np.deg2rad(float(one.defocus_angle_deg[0]) + offset)
        ax1.plot(k, evaluate_ctf(one, k * np.cos(a), k * np.sin(a))[0], style, lw=1, label=name)
    for z in ctf_zeros_invA(one, float(one.defocus_angle_deg[0]), nyquist):
        ax1.axvline(z, color="0.8", lw=0.6, zorder=0)
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_xlabel("spatial frequency (1/Å)")
    ax1.set_ylabel("CTF")
    ax1.legend(fontsize=8, loc="upper right")
    ax1.set_title(f"defocus U {one.defocus_u_A[0] / 1e4:.2f} µm, V "
                  f"{one.defocus_v_A[0] / 1e4:.2f} µm, {one.voltage_kV[0]:g} kV, Cs "
                  f"{one.cs_mm[0]:g} mm, Q {one.amplitude_contrast[0]:g}, B "
                  f"{one.bfactor_A2[0]:g} Å²", fontsize=8)
    image, _ = ctf_image(one, pixel_size_A)
    ax2.imshow(image, cmap="RdBu_r", vmin=-1, vmax=1, origin="upper",
               extent=(-nyquist, nyquist, nyquist, -nyquist), interpolation="antialiased")
    ax2.set_xlabel("kx (1/Å)")
    ax2.set_ylabel("ky (1/Å)")
    ax2.set_title(f"2D to Nyquist ({box_size} px images)", fontsize=8)
    return fig


