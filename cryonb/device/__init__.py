"""The backend-generic ("device") path: likelihood, gradient, slicing, CTF and FFTs written
with Python array API operations only, so they run on CuPy (a GPU) as well as on NumPy.

The host path (NumPy + numba kernels: :mod:`cryonb.likelihood.host`, :mod:`cryonb.projection`) is
the fast path on a CPU; this package is what runs when the backend is CuPy, or any other
array-API namespace.  The tests run it with NumPy and with ``array_api_strict`` (a namespace
that rejects every non-standard call), so no NumPy-only call hides in it.  Backend-specific
code is confined to two marked places: the scatter-add of back-projection
(:mod:`cryonb.device.scatter`) and the device-to-host copy (:func:`namespace.to_host`).

Data stay on the host; each minibatch is moved to the device by
:meth:`DeviceMarginalLikelihood.prepare`, and the results come back as NumPy arrays.

==========================  ======================================================
module                      job
==========================  ======================================================
``device.namespace``        find the namespace, move arrays host <-> device, dtypes
``device.fourier``          centred FFTs (``xp.fft``), centred crop / pad
``device.ctf``              RELION's CTF at given frequencies
``device.projection``       ``DeviceProjector`` (slice via ``take``, back-projection),
                            shift phase ramps
``device.scatter``          scatter-add (NumPy / CuPy / portable sort-based fallback)
``device.likelihood``       re-export of ``DeviceMarginalLikelihood`` (now in
                            :mod:`cryonb.likelihood.device`) and ``marginal_likelihood``
                            (alias of :func:`cryonb.likelihood.make_engine`)
==========================  ======================================================

Examples
--------
>>> from cryonb.device import marginal_likelihood                     # doctest: +SKIP
>>> lik = marginal_likelihood(model, quadrature, backend="cupy")     # DeviceMarginalLikelihood
>>> res = lik.evaluate(lik.volume_to_fourier(volume), lik.prepare(images, ctf, 1.0),
...                    gradient=True)
"""

from typing import Any

from .projection import DeviceProjector, shift_phases

__all__ = ["DeviceMarginalLikelihood", "DeviceProjector", "marginal_likelihood", "shift_phases"]


def __getattr__(name: str) -> Any:
    """``DeviceMarginalLikelihood`` and ``marginal_likelihood`` from :mod:`cryonb.likelihood`,
    imported on first use: :mod:`cryonb.likelihood.device` imports this package's modules, so
    an eager import here would be circular."""
    if name == "DeviceMarginalLikelihood":
        from ..likelihood.device import DeviceMarginalLikelihood

        return DeviceMarginalLikelihood
    if name == "marginal_likelihood":
        from ..likelihood.engine import marginal_likelihood

        return marginal_likelihood
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
