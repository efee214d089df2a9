"""Marginal likelihood of particle images over the pose quadrature (Eq. 4) and its gradient.

The package's modules, each with one job:

=====================  ==========================================================================
module                 job
=====================  ==========================================================================
``types``              ``PreparedImages``, ``PoseSubset``, ``LikelihoodResult``; half-plane,
                       noise estimate, dtype helpers, log-sum-exp (shared by both engines)
``engine``             the ``Engine`` protocol and ``make_engine`` (host for NumPy, device else)
``grouping``           images grouped by pose subset, per-image outputs (both engines)
``host``               ``MarginalLikelihood``: the NumPy + numba engine
``dense``              its GEMM passes over image groups (value, gradient, back-projection)
``sparse``             its sparse store of the scores with a nonzero posterior (CSR)
``scores``             its sweeps over blocks of scores (numba kernels or NumPy twins)
``fused``              the value sweep in one pass and the cached posterior (numba kernels)
``device``             ``DeviceMarginalLikelihood``: the array-API engine (CuPy)
``reference``          ``reference_log_joint`` (direct sums for tests), ``negative_log_posterior``
=====================  ==========================================================================

Examples
--------
>>> lik = make_engine(model, Quadrature.for_model(model))             # doctest: +SKIP
>>> batch = lik.prepare(images, ctf, noise_sigma=estimate_noise_sigma(images))
>>> res = lik.evaluate(lik.volume_to_fourier(vol), batch, gradient=True)
>>> res.log_likelihood, res.posterior_directions, res.gradient.shape
"""

from .dense import _BackprojectBuffer, _DensePass, _DenseState, _SliceTable
from .device import DeviceMarginalLikelihood
from .engine import Engine, make_engine, marginal_likelihood
from .grouping import _Accumulator, _Group, group_images
from .host import MarginalLikelihood
from .reference import negative_log_posterior, reference_log_joint
from .scores import _EXP_LO, _SKIP_MARGIN, _complete_scores, _exp_sums, _posterior
from .sparse import _SPARSE_DENSITY, _csr_posterior, _csr_to_dense, _SparseStore, _StoredBlock
from .types import (
    LikelihoodResult,
    PoseSubset,
    PreparedImages,
    _complex_dtype,
    _logsumexp,
    _real_dtype,
    estimate_noise_sigma,
    hermitian_half_plane,
)

__all__ = [
    "DeviceMarginalLikelihood",
    "Engine",
    "LikelihoodResult",
    "MarginalLikelihood",
    "PoseSubset",
    "PreparedImages",
    "estimate_noise_sigma",
    "group_images",
    "hermitian_half_plane",
    "make_engine",
    "marginal_likelihood",
    "negative_log_posterior",
    "reference_log_joint",
]

# private names re-exported for the tests and for code written against the former module
_PRIVATE = (_Accumulator, _BackprojectBuffer, _DensePass, _DenseState, _EXP_LO, _Group,
            _SKIP_MARGIN, _SPARSE_DENSITY, _SliceTable, _SparseStore, _StoredBlock,
            _complete_scores, _complex_dtype, _csr_posterior, _csr_to_dense, _exp_sums,
            _logsumexp, _posterior, _real_dtype)
