"""The schedule of the importance-sampling proposal (Eq. 14): its uniform share and temperature.

:class:`ISSchedule` gives ``alpha_t`` and ``T_t`` at the sampler's clock ``t``;
:class:`cryonb.importance.ImportanceSampler` mixes the uniform distribution in with weight
``alpha_t`` and anneals each particle's recorded posterior ``phi^(1/T_t)`` when it makes the
proposal.  :func:`cryonb.config.is_schedule_for` compresses and cools the reference's schedule
for a run.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ISSchedule"]


@dataclass(frozen=True)
class ISSchedule:
    """Mixing weight ``alpha_t`` and annealing temperature ``T_t`` of Eq. (14).

    ``alpha_t = max(alpha_min, alpha_max 2^(-alpha_rate * u))`` with ``u = max(0, t - alpha_delay)``
    (rounded down to a multiple of ``alpha_step`` if given) and
    ``T_t = max(temperature_min, 2^(temperature_scale / max(1, t - temperature_delay)))``.
    The chirality flip (directions ``d`` and ``-d``, in-plane ``psi`` and ``psi + pi`` treated
    as one by the kernel) is on while ``t < chirality_flip_until``.

    Use :meth:`reference` (the reference code's values, ALGORITHM.md 8.6), :meth:`paper` (the
    paper's, as far as the text can be read) or :meth:`constant`.
    """

    alpha_min: float = 0.05
    alpha_max: float = 1.0
    alpha_rate: float = 0.005
    alpha_delay: int = 50
    alpha_step: int | None = None
    temperature_min: float = 1.0
    temperature_scale: float = 750.0
    temperature_delay: int = 50
    chirality_flip_until: int = 2500

    @classmethod
    def reference(cls) -> ISSchedule:
        """``alpha = max(0.05, 2^(-0.005 max(0, t-50)))``, ``T = max(1, 2^(750 / max(1, t-50)))``.

        alpha is 1 until iteration 50, 0.5 at 250, 0.05 from about 914; T is effectively
        infinite before ~100, 32 at 200, 8 at 300, 2 at 800; chirality flip until 2500.
        """
        return cls()

    @classmethod
    def paper(cls) -> ISSchedule:
        """The paper's reading ``alpha = max(0.05, 2^(-0.25 floor(t / 50)))`` and ``T >= 1.25``.

        The OCR of the paper's temperature schedule is unreadable beyond its floor of 1.25;
        the reference's shape (scale 750, delay 50) is used for the rest.
        """
        return cls(alpha_rate=0.005, alpha_delay=0, alpha_step=50, temperature_min=1.25)

    @classmethod
    def constant(cls, alpha: float, temperature: float = 1.0,
                 chirality_flip: bool = False) -> ISSchedule:
        """Fixed ``alpha`` and ``T`` (tests, notebooks)."""
        return cls(alpha_min=alpha, alpha_max=alpha, alpha_rate=0.0,
                   temperature_min=temperature, temperature_scale=0.0,
                   chirality_flip_until=2**62 if chirality_flip else 0)

    def alpha(self, iteration: int) -> float:
        """Weight of the uniform component at ``iteration``."""
        u = max(0, iteration - self.alpha_delay)
        if self.alpha_step:
            u = self.alpha_step * (u // self.alpha_step)
        return float(max(self.alpha_min, self.alpha_max * 2.0 ** (-self.alpha_rate * u)))

    def inverse_temperature(self, iteration: int) -> float:
        """``1 / T`` (0 when T overflows; computing 1/T avoids the overflow)."""
        expo = self.temperature_scale / max(1, iteration - self.temperature_delay)
        return float(min(1.0 / self.temperature_min, 2.0 ** (-expo)))

    def temperature(self, iteration: int) -> float:
        """``T`` (may be ``inf``)."""
        beta = self.inverse_temperature(iteration)
        return float("inf") if beta == 0 else 1.0 / beta

    def chirality_flip(self, iteration: int) -> bool:
        """Whether the kernels identify mirror poses at ``iteration``."""
        return iteration < self.chirality_flip_until
