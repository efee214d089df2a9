"""Former home of the device likelihood engine; it now lives in :mod:`cryonb.likelihood.device`
(the engine) and :mod:`cryonb.likelihood.engine` (:func:`make_engine`).  Re-exported here so
existing imports keep working."""

from ..likelihood.device import DeviceMarginalLikelihood
from ..likelihood.engine import make_engine, marginal_likelihood

__all__ = ["DeviceMarginalLikelihood", "make_engine", "marginal_likelihood"]
