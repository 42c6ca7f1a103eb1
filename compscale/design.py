"""Adaptive design: which cells to train next so that what the user asks for (every format's rho,
the composition ratios, or the law's exponents) is pinned down fastest per FLOP.

The criterion is the linearised (Gaussian) update of the bootstrap ensemble, as an ensemble
Kalman filter does it. Let S be the ensemble's covariance of the target quantities g and of each
candidate cell's predicted log loss h. Training the cell observes h plus noise of variance s^2
(the fit's RMSE of log loss: the scatter cells show around the law), which shrinks the variance
of g_t by Cov(g_t, h)^2 / (Var(h) + s^2): a cell helps when the resamples disagree about its loss
(Var(h)) in a way that tracks the target (Cov(g_t, h)), and no more than noise allows. This is the
Sherman-Morrison form of adding the cell's Fisher information j j^T / s^2 to the information
S^-1, with S from the bootstrap rather than an inverse Hessian, so it needs no Jacobian and sees
bounds and flat valleys as the bootstrap does. Cells are picked greedily by reduction per FLOP
(6 N D) until the budget is spent, S updated after each pick: a second copy of a cell (a new
seed) is worth less than the first, which is the diminishing return.

Formats the fit has no rho for are not candidates: the unified law gives each format a free rho,
which the ensemble does not hold, so the update cannot value its cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compscale.advise import LEVEL, Ensemble

TARGETS = ("rho", "composition", "law")


@dataclass(frozen=True)
class Candidate:
    """A cell that could be trained: N non-embedding parameters, D tokens, a format."""

    params: float
    tokens: float
    format: str

    @property
    def flops(self) -> float:
        return 6.0 * self.params * self.tokens


def target_draws(ensemble: Ensemble, target: str) -> tuple[list[str], np.ndarray]:
    """The target quantities' names and their draws (resamples x quantities).

    `rho`: rho of every compressed fitted format; `composition`: log(rho(A+B) / (rho(A) rho(B)))
    of every fitted composite whose parts were fitted; `law`: the exponents alpha and beta.
    """
    dense = ensemble.fitted.dense
    formats = [name for name in ensemble.fitted_formats() if name != dense]
    if target == "rho":
        names = [f"rho[{name}]" for name in formats]
        columns = [ensemble.column(name) for name in names]
    elif target == "composition":
        names, columns = [], []
        for name in formats:
            parts = name.split("+")
            if len(parts) > 1 and all(part in ensemble.fitted.rho for part in parts):
                names.append(f"composition[{name}]")
                log_parts = sum(np.log(ensemble.column(f"rho[{p}]")) for p in parts)
                columns.append(np.log(ensemble.column(f"rho[{name}]")) - log_parts)
    elif target == "law":
        names = ["alpha", "beta"]
        columns = [ensemble.column(name) for name in names]
    else:
        raise ValueError(f"target: unknown target {target!r}; choose {', '.join(TARGETS)}")
    if not names:
        raise ValueError(
            f"target: the fit has no {target} quantities (a composite A+B whose parts were fitted?)"
        )
    return names, np.column_stack(columns)


def prediction_draws(ensemble: Ensemble, candidates: Sequence[Candidate]) -> np.ndarray:
    """log predicted loss of every candidate in every resample (resamples x candidates)."""
    A, alpha, B, beta, E = (values[:, None] for values in ensemble.base())
    params = np.array([c.params for c in candidates])
    tokens = np.array([c.tokens for c in candidates])
    rho = np.column_stack([ensemble.rho_draws(c.format) for c in candidates])
    return np.log(A * (params * rho) ** -alpha + B * tokens**-beta + E)


@dataclass(frozen=True)
class Proposal:
    """Cells picked in order (indices into the candidates; a repeat is another seed), the
    predicted variance reduction of each pick, and every target's interval width before and
    after (linearised)."""

    picks: list[int]
    gains: list[float]
    flops: float
    targets: list[str]
    width_before: np.ndarray
    width_after: np.ndarray


def propose(
    ensemble: Ensemble,
    candidates: Sequence[Candidate],
    budget_flops: float,
    target: str = "rho",
    noise: float | None = None,
    max_copies: int | None = None,
) -> Proposal:
    """Greedy picks of the candidate that most reduces the summed variance of the target
    quantities per FLOP, until no candidate fits the budget left (see the module docstring).

    `max_copies` caps the seeds of one candidate: the update trusts the law at every cell, so
    without a cap it would spend a large budget on copies of the cheapest informative cell,
    where a misfit of the law would then bias the target."""
    if budget_flops <= 0:
        raise ValueError(f"budget: FLOPs must be positive, got {budget_flops}")
    if not candidates:
        raise ValueError("candidates: none to choose from")
    unknown = sorted({c.format for c in candidates} - set(ensemble.fitted_formats()))
    if unknown:
        raise ValueError(f"candidates: format(s) {', '.join(unknown)} have no fitted rho")
    if len(ensemble.samples) < 3:
        raise ValueError("bootstrap: the design needs a bootstrap ensemble (>= 3 resamples)")
    names, goals = target_draws(ensemble, target)
    draws = np.column_stack([goals, prediction_draws(ensemble, candidates)])
    covariance = np.atleast_2d(np.cov(draws, rowvar=False))
    before = np.diag(covariance)[: len(names)].copy()
    noise_var = (ensemble.noise if noise is None else noise) ** 2
    cost = np.array([c.flops for c in candidates])
    columns = len(names) + np.arange(len(candidates))
    copies = np.zeros(len(candidates), dtype=int)
    cap = math.inf if max_copies is None else max_copies
    picks, gains, left = [], [], budget_flops
    while True:
        affordable = np.flatnonzero((cost <= left) & (copies < cap))
        if not affordable.size:
            break
        cross = covariance[: len(names)][:, columns[affordable]]
        own = covariance[columns[affordable], columns[affordable]] + noise_var
        gain = (cross**2).sum(axis=0) / own
        if gain.max() <= 1e-12 * before.sum():
            break
        best = affordable[np.argmax(gain / cost[affordable])]
        column = covariance[:, columns[best]].copy()
        covariance -= np.outer(column, column) / (column[columns[best]] + noise_var)
        copies[best] += 1
        picks.append(int(best))
        gains.append(float(gain[np.flatnonzero(affordable == best)[0]]))
        left -= cost[best]
    low, high = np.percentile(goals, LEVEL, axis=0)
    width = high - low
    after = np.diag(covariance)[: len(names)]
    ratio = np.sqrt(np.divide(after, before, out=np.ones_like(before), where=before > 0))
    return Proposal(picks, gains, budget_flops - left, names, width, width * ratio)


def random_picks(
    candidates: Sequence[Candidate], budget_flops: float, rng: np.random.Generator
) -> list[int]:
    """Candidates drawn uniformly (with repeats) while the budget lasts: the baseline design."""
    cost = np.array([c.flops for c in candidates])
    picks, left = [], budget_flops
    while (cost <= left).any():
        pick = int(rng.choice(np.flatnonzero(cost <= left)))
        picks.append(pick)
        left -= cost[pick]
    return picks


# ---- paired design: whole (N, D, seed) groups valued on the reducer's paired fit -------------


@dataclass(frozen=True)
class Group:
    """A new seed at (N, D): one cell of every format, trained from the same weights and batches.
    `flops`: what training it costs (6 N D per cell unless the caller knows better: a ladder
    shares its trunk)."""

    params: float
    tokens: float
    formats: tuple[str, ...]
    flops: float = 0.0

    @property
    def cost(self) -> float:
        return self.flops or 6.0 * self.params * self.tokens * len(self.formats)


@dataclass(frozen=True)
class GroupProposal:
    """Groups picked in order (indices into the candidates; a repeat is one more seed), the
    FLOPs they cost, and the judged quantities' summed variance before and after (linearised)."""

    picks: list[int]
    flops: float
    variance_before: float
    variance_after: float


def shared_noise(fit, results) -> tuple[float, float]:
    """(own, shared) sd of log loss: own from the paired fit's residuals, shared from how the
    (N, D, seed) groups' mean residuals scatter between seeds of one (N, D) (the seed's luck)."""
    import pandas as pd

    own = float(fit.fit_error["rmse_log_loss"])
    predicted = fit.fitted.predict(results["params"], results["tokens"], results["format"])
    frame = pd.DataFrame(
        {
            "residual": np.log(results["val_loss"].to_numpy(float)) - np.log(predicted),
            "params": results["params"].to_numpy(),
            "tokens": results["tokens"].to_numpy(),
            "seed": results["seed"].to_numpy(),
        }
    )
    means = frame.groupby(["params", "tokens", "seed"])["residual"].mean().reset_index()
    spread = means.groupby(["params", "tokens"])["residual"]
    dof = int((spread.count() - 1).clip(lower=0).sum())
    if dof == 0:
        return own, 10 * own  # not measured yet: treat the seed's luck as large
    shared = math.sqrt(float(spread.var(ddof=1).fillna(0) @ (spread.count() - 1)) / dof)
    return own, shared


def propose_groups(
    goals: np.ndarray,
    fit,
    candidates: Sequence[Group],
    budget_flops: float,
    *,
    own_noise: float,
    shared_noise: float,
    max_copies: int | Sequence[int] | None = None,
) -> GroupProposal:
    """Greedy picks of the group that most shrinks the summed variance of the judged quantities
    (`goals`: resamples x quantities, from the same resamples as `fit.bootstrap_samples`) per
    FLOP, until no group fits `budget_flops` or none helps.

    The update is the module docstring's, for a group observed at once: its cells' log losses h
    (predicted in every resample of the paired fit) come with noise of covariance
    own^2 I + shared^2 J (the seed's luck is common to the group, which the paired fit removes),
    so the target covariance shrinks by C_gh (C_hh + R)^-1 C_hg. A second copy (another seed)
    of a group is valued after the first, which is the diminishing return. `max_copies`: picks
    of each group at most (one number for all, or one per group)."""
    if budget_flops <= 0 or not candidates:
        return GroupProposal([], 0.0, math.nan, math.nan)
    samples, names = fit.bootstrap_samples, fit.names
    base = [samples[:, names.index(name)][:, None] for name in ("A", "alpha", "B", "beta", "E")]
    A, alpha, B, beta, E = base
    columns, slices = [goals], []
    start = goals.shape[1]
    for group in candidates:
        rho = np.column_stack([samples[:, names.index(f"rho[{f}]")] for f in group.formats])
        h = np.log(A * (group.params * rho) ** -alpha + B * group.tokens**-beta + E)
        columns.append(h)
        slices.append(np.arange(start, start + h.shape[1]))
        start += h.shape[1]
    draws = np.column_stack(columns)
    covariance = np.atleast_2d(np.cov(draws, rowvar=False))
    targets = np.arange(goals.shape[1])
    before = float(np.trace(covariance[np.ix_(targets, targets)]))
    cost = np.array([group.cost for group in candidates])
    copies = np.zeros(len(candidates), dtype=int)
    cap = np.broadcast_to(np.inf if max_copies is None else max_copies, len(candidates))
    picks, left = [], budget_flops

    def update(index: int) -> tuple[float, np.ndarray]:
        cells = slices[index]
        k = len(cells)
        noise = own_noise**2 * np.eye(k) + shared_noise**2 * np.ones((k, k))
        inner = covariance[np.ix_(cells, cells)] + noise
        gain = covariance[:, cells] @ np.linalg.solve(inner, np.eye(k))
        change = gain @ covariance[cells, :]
        return float(np.trace(change[np.ix_(targets, targets)])), change

    while True:
        affordable = [i for i in range(len(candidates)) if cost[i] <= left and copies[i] < cap[i]]
        if not affordable:
            break
        values = {i: update(i) for i in affordable}
        best = max(affordable, key=lambda i: values[i][0] / cost[i])
        if values[best][0] <= 1e-9 * before:
            break
        covariance = covariance - values[best][1]
        copies[best] += 1
        picks.append(best)
        left -= cost[best]
    after = float(np.trace(covariance[np.ix_(targets, targets)]))
    return GroupProposal(picks, budget_flops - left, before, after)
