"""A loss that stops being finite, found without a device sync per step.

The training loop marks each step's loss on the device (no host sync) and reads the mark every
`DIVERGENCE_CHECK_EVERY` steps, at evaluations, before a checkpoint and at the end: one sync each.
A diverged cell fails as `Diverged` instead of storing a NaN result.
"""

from __future__ import annotations

import math

import torch

DIVERGENCE_CHECK_EVERY = 50  # steps between reads of the non-finite-loss flag (one sync each)


class Diverged(ValueError):
    """The training or validation loss stopped being finite: the cell fails (`error_class`
    Diverged, the step in the message) instead of storing a NaN result. The same config diverges
    again, so it is a value to change (a learning rate, most often)."""


class DivergenceWatch:
    """The first step whose training loss is not finite, kept on the device: marking a step
    costs no host sync; `check` reads it (one sync) only when the loop asks."""

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), device=device)

    def mark(self, step: int, loss: torch.Tensor) -> None:
        new = (self.first_step < 0) & ~torch.isfinite(loss)
        self.first_step = torch.where(new, step, self.first_step)
        self.loss = torch.where(new, loss, self.loss)

    def check(self, step: int, val_loss: float | None) -> None:
        """Raise `Diverged` if a marked training loss, or this step's `val_loss`, is not finite."""
        if (first := int(self.first_step)) >= 0:
            raise Diverged(f"training loss became {float(self.loss)} at step {first}")
        if val_loss is not None and not math.isfinite(val_loss):
            raise Diverged(f"validation loss became {val_loss} at step {step}")
