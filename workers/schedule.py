"""Learning-rate schedules and their step arithmetic, without torch (sweep expansion uses them).

cosine: warm-up, then cosine decay over the cell's own steps. wsd (warmup-stable-decay): warm-up,
a constant rate, then a cooldown over the last `cooldown_fraction` of the steps; the rate before
the cooldown does not depend on the budget, which is what lets `workers.ladder` share a trunk.
"""

from __future__ import annotations

import math

from workers.config import CellConfig, TrainConfig


def total_steps(cell: CellConfig) -> int:
    """Optimizer steps of a cell: whole global batches of its token budget."""
    return cell.tokens // (cell.train.batch_size * cell.model.seq_len)


def horizon(total_steps: int, config: TrainConfig) -> int:
    """The steps that `warmup_fraction` and `sparsity_ramp_fraction` are fractions of: the cell's
    own, except under WSD with `horizon_steps` set, where every budget of a model shares them."""
    return config.horizon_steps or total_steps if config.schedule == "wsd" else total_steps


def cooldown_start(total_steps: int, config: TrainConfig) -> int:
    """The first step of the WSD cooldown: the ladder's fork step for this budget."""
    return total_steps - math.ceil(config.cooldown_fraction * total_steps)


def learning_rate(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warmup over `warmup_fraction` of the horizon, then either cosine decay to
    `min_lr_ratio` (cosine) or a constant rate and a 1-sqrt cooldown to `min_lr_ratio` over the
    last `cooldown_fraction` of the steps (wsd; 1-sqrt beat linear in Hägele et al. 2024). Under
    WSD the rate before the cooldown does not depend on `total_steps`, so budgets share a trunk."""
    warmup = int(config.warmup_fraction * horizon(total_steps, config))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "wsd":
        start = cooldown_start(total_steps, config)
        if step < start:
            return config.lr
        progress = (step - start + 1) / (total_steps - start)
        return config.lr * (1 - (1 - config.min_lr_ratio) * math.sqrt(progress))
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)
