"""When an adaptive sweep stops: its question decided, its budget spent, or nothing left to try.

Looking at the interval after every round and stopping at the first round that looks decided
inflates the error rate: with K looks at 95% intervals, the chance that some look's interval
misses the truth is up to 1 - 0.95^K (and optional stopping picks exactly such looks). The rule
therefore spends the error rate alpha = 1 - level over the most looks the budget allows, fixed
before round 0 runs (`max_looks`: round 0 plus every full round that fits in the budget, and never
more: the loop stops at that round whatever it sees), by Bonferroni: every look uses an interval at
level 1 - alpha / K. By the union bound the chance that any of the K intervals misses the truth is
at most alpha, so the interval of the round the loop stops at (whichever that is) covers the truth
with probability >= `level`, the same guarantee a single planned look at `level` gives. It is
conservative (the looks are positively correlated, so the true error rate is lower); the price
is an interval wider by z(1 - alpha/2K) / z(1 - alpha/2): 1.22x at K = 4, 1.37x at K = 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from compscale.questions import Answer

TARGET = "target reached"
BUDGET = "budget spent"
LOOKS = "last look the budget allows"
NO_HELP = "no candidate helps"


def max_looks(budget_flops: float, round0_flops: float, round_flops: float) -> int:
    """Round 0 plus every full round of `round_flops` that fits in what round 0 leaves."""
    if budget_flops < round0_flops:
        raise ValueError(
            f"budget_flops: {budget_flops:.3g} FLOPs is below round 0's cost "
            f"({round0_flops:.3g} FLOPs, the spec's own cells)"
        )
    return 1 + math.floor((budget_flops - round0_flops) / round_flops + 1e-9)


@dataclass(frozen=True)
class StopRule:
    """The stop rule of one adaptive sweep: `target` half-width (None for `order`), at most
    `looks` looks, each at `look_level` (Bonferroni over the looks, see the module docstring)."""

    target: float | None
    looks: int
    level: float = 0.95

    @property
    def look_level(self) -> float:
        return 1 - (1 - self.level) / self.looks

    def verdict(self, round_index: int, answer: Answer) -> str | None:
        """Why the loop stops after round `round_index` given its answer, or None to go on (the
        caller adds BUDGET and NO_HELP, which depend on the candidates)."""
        if answer.decided(self.target):
            return TARGET
        if round_index + 1 >= self.looks:
            return LOOKS
        return None
