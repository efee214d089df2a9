"""The likelihood-engine protocol and the one factory that picks an engine for a backend.

One job: :class:`Engine`, what the solver, the objective and importance sampling need from an
engine of Eq. 4 (the marginal log-likelihood over the pose quadrature, its posterior
marginals, MAP poses and its gradient), and :func:`make_engine`, the one place where the
implementation is chosen: the host engine (:class:`~.host.MarginalLikelihood`, NumPy + numba)
for NumPy, the device engine (:class:`~.device.DeviceMarginalLikelihood`, array API) for any
other backend.  Both give the same :class:`~.types.LikelihoodResult`, so callers never need
``isinstance``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from numpy.typing import ArrayLike

from ..backend import Backend, get_backend
from ..ctf import CTFParams
from ..image_model import ImageModel
from ..quadrature import Quadrature
from .device import DeviceMarginalLikelihood
from .host import MarginalLikelihood
from .types import LikelihoodResult, PoseSubset, PreparedImages

__all__ = ["Engine", "make_engine", "marginal_likelihood"]


@runtime_checkable
class Engine(Protocol):
    """A likelihood engine: Eq. 4 and its gradient for minibatches of images.

    Attributes
    ----------
    model : ImageModel
        Box, pixel size, band limit, projector geometry and CTF sign.
    quadrature : Quadrature
        The pose and shift grid that the result's indices refer to.
    """

    model: ImageModel
    quadrature: Quadrature

    def prepare(self, images: Any, ctf: CTFParams | None = None,
                noise_sigma: float | ArrayLike | None = None,
                dtype: Any = ...) -> PreparedImages:
        """Reduce a batch of images to half-plane Fourier data (on the engine's device)."""
        ...

    def volume_to_fourier(self, volume: Any) -> Any:
        """Real (N, N, N) volume -> the padded spectrum :meth:`evaluate` takes."""
        ...

    def evaluate(self, volume_ft: Any, images: PreparedImages | Any,
                 ctf: CTFParams | None = None, noise_sigma: float | ArrayLike | None = None,
                 subsets: list[PoseSubset] | None = None, *,
                 gradient: bool = False) -> LikelihoodResult:
        """Log-likelihoods (Eq. 4), posterior marginals, MAP poses and optionally the gradient
        ``d/dV sum_b log p(I_b | V)`` (host arrays)."""
        ...


def make_engine(model: ImageModel, quadrature: Quadrature, *,
                backend: str | Backend | None = None, **options: Any) -> Engine:
    """The likelihood engine for a backend: the one place where the implementation is chosen.

    Parameters
    ----------
    model, quadrature : as for :class:`~cryonb.likelihood.MarginalLikelihood`
    backend : ``"numpy"``, ``"cupy"``, ``"array_api_strict"``, a Backend, or None (the
        backend of ``model``, i.e. of the innermost :func:`~cryonb.backend.use_backend` block)
    **options : passed to the engine (e.g. ``block_bytes``, ``cache_bytes``; the host engine
        also takes ``small_group_size``, ``use_numba``, ``sparse_bytes``)

    Returns
    -------
    :class:`~cryonb.likelihood.MarginalLikelihood` (numba kernels) for NumPy;
    :class:`~cryonb.likelihood.DeviceMarginalLikelihood` in the backend's array-API namespace
    otherwise.
    """
    bk = get_backend(model.backend if backend is None else backend)
    if bk.is_numpy:
        return MarginalLikelihood(model, quadrature, **options)
    return DeviceMarginalLikelihood(model, quadrature, xp=bk.namespace, **options)


def marginal_likelihood(model: ImageModel, quadrature: Quadrature, *,
                        backend: str | Backend | None = None
                        ) -> MarginalLikelihood | DeviceMarginalLikelihood:
    """Former name of :func:`make_engine` (kept for existing callers)."""
    return make_engine(model, quadrature, backend=backend)
