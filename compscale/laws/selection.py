"""Which law form the cells support: every form fitted to all model sizes but one and asked for
the held-out size's losses (leave one size out), scored by the RMSE of log loss over every
held-out cell. A form with more parameters always fits its own cells at least as well; only
prediction at a size it never saw tells whether the extra parameters describe the data.

Each fold's fit is the point estimate only (no bootstrap); a fold whose training cells cannot
support the form (one model size left, a format missing) scores none of its cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from compscale import capacity
from compscale.laws.cells import observations
from compscale.laws.fitting import fit
from compscale.laws.options import FitOptions

MULTI_FORMAT_LAWS = ("unified", "unified-effd", "unified-gamma", "unified-gmse")


@dataclass(frozen=True)
class HeldOutScore:
    """One law form's leave-one-size-out error: RMSE of log(predicted / observed) over `cells`
    held-out cells from `folds` folds (NaN and a `note` when no fold could be fitted)."""

    law: str
    rmse_log_loss: float
    cells: int
    folds: int
    note: str = ""


def candidate_laws(formats: Sequence[str]) -> tuple[str, ...]:
    """The forms worth comparing on these cells: chinchilla for one format, else the unified
    forms."""
    return ("chinchilla",) if len(set(formats)) == 1 else MULTI_FORMAT_LAWS


def leave_one_size_out(
    params: Sequence[float],
    tokens: Sequence[float],
    loss: Sequence[float],
    formats: Sequence[str] | None = None,
    *,
    law_names: Sequence[str] | None = None,
    options: FitOptions | None = None,
    parts: Mapping[str, Sequence[capacity.Part]] | None = None,
    multipliers: Mapping[str, tuple[bool, bool]] | None = None,
) -> list[HeldOutScore]:
    """Each form of `law_names` (default `candidate_laws`) scored by its held-out error; `options`,
    `parts` and `multipliers` as `fit` takes them (the bootstrap is off in every fold)."""
    params, tokens, loss = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
    names = np.asarray(formats if formats is not None else ["dense"] * len(loss), dtype=object)
    observations(params, tokens, loss, list(names))  # the same validation as `fit`
    fold_options = replace(options or FitOptions(), bootstrap=0, jobs=1)
    scores = []
    for law in law_names or candidate_laws(list(names)):
        residuals, folds, failures = [], 0, []
        for size in np.unique(params):
            train, held = params != size, params == size
            held &= np.isin(names, names[train])
            try:
                result = fit(
                    params[train],
                    tokens[train],
                    loss[train],
                    list(names[train]),
                    law=law,
                    options=fold_options,
                    parts=parts,
                    multipliers=multipliers,
                )
            except ValueError as error:
                failures.append(str(error).split(";")[0])
                continue
            predicted = result.predict(params[held], tokens[held], list(names[held]))
            residuals.append(np.log(predicted) - np.log(loss[held]))
            folds += 1
        held_out = np.concatenate(residuals) if residuals else np.zeros(0)
        rmse = float(np.sqrt(np.mean(held_out**2))) if len(held_out) else math.nan
        note = f"{len(failures)} fold(s) not fitted: {failures[0]}" if failures else ""
        scores.append(HeldOutScore(law, rmse, len(held_out), folds, note))
    return scores


def selection_text(scores: Sequence[HeldOutScore]) -> str:
    """The scores as a table, lowest held-out error first, the best form named."""
    ranked = sorted(scores, key=lambda s: (math.isnan(s.rmse_log_loss), s.rmse_log_loss))
    lines = [
        "leave-one-size-out held-out error (each size predicted by a fit to the others)",
        f"{'law':<16}{'RMSE log loss':>15}{'cells':>8}{'folds':>7}",
    ]
    for score in ranked:
        lines.append(
            f"{score.law:<16}{score.rmse_log_loss:>15.5g}{score.cells:>8}{score.folds:>7}"
            + (f"  {score.note}" if score.note else "")
        )
    if ranked and not math.isnan(ranked[0].rmse_log_loss):
        lines.append(f"lowest held-out error: {ranked[0].law}")
    return "\n".join(lines)
