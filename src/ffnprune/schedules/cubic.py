"""The cubic gradual schedule of Zhu & Gupta (2017), METHOD section 3.

With T steps, a warm-up of W = warmup_share * T and a cool-down of C = cooldown_share * T (the paper: W = 0.1 T and
C = 3 W):
    t <= W:            v_t = 1                                        (dense)
    W < t <= T - C:    v_t = v_f + (1 - v_f) * (1 - (t - W) / (T - W - C))^3
    t > T - C:         v_t = v_f                                      (cool-down at the final density)
Soft movement's threshold follows the same shape from 0 to its final value.
"""

from __future__ import annotations

from dataclasses import dataclass

from ffnprune.errors import FfnpruneError


@dataclass(frozen=True)
class CubicSchedule:
    total_steps: int
    final_keep: float
    warmup_share: float = 0.1
    cooldown_share: float = 0.3

    def __post_init__(self):
        if not (0 <= self.warmup_share and 0 <= self.cooldown_share and self.warmup_share + self.cooldown_share < 1):
            raise FfnpruneError(
                f"warm-up share {self.warmup_share} and cool-down share {self.cooldown_share} must be >= 0 and leave "
                "a pruning phase (sum < 1)"
            )
        if self.pruning_steps < 1:
            needed = int(1 / (1 - self.warmup_share - self.cooldown_share)) + 1
            raise FfnpruneError(
                f"{self.total_steps} steps are too few for the schedule: warm-up ({self.warmup_share:.0%}) and "
                f"cool-down ({self.cooldown_share:.0%}) leave less than one pruning step; use --steps {needed} or more"
            )

    @property
    def warmup_steps(self) -> float:
        return self.warmup_share * self.total_steps

    @property
    def pruning_steps(self) -> float:
        return self.total_steps * (1 - self.warmup_share - self.cooldown_share)

    def remaining(self, step: int) -> float:
        """(1 - progress)^3: 1 during warm-up, falling to 0 at the start of the cool-down."""
        progress = min(max((step - self.warmup_steps) / self.pruning_steps, 0.0), 1.0)
        return (1.0 - progress) ** 3

    def keep_fraction(self, step: int) -> float:
        return self.final_keep + (1.0 - self.final_keep) * self.remaining(step)

    def threshold(self, step: int, final_threshold: float) -> float:
        return final_threshold * (1.0 - self.remaining(step))
