"""Questions a sweep can ask of its fitted law, each one number with an interval from the paired
unified fit's bootstrap (the fit `compscale.reduce` makes; `compscale.reduce.unified_fit`).

- `composition A B`: rho(A+B) / (rho(A) rho(B)), judged on its log (0 = multiplicative).
- `rho FORMAT`: one capacity, judged on log rho.
- `order F1 F2 ...`: rho(F1) < rho(F2) < ...; each adjacent pair's log rho(F_{i+1}) - log rho(F_i)
  comes from the same resample, and the question is decided when every pair's interval excludes
  0 (the number reported is the pair closest to undecided: the smallest |mid| / half-width).
- `predict N D FORMAT`: the law's loss (nats) at N non-embedding parameters and D tokens, judged
  on log loss.

Every interval is a percentile interval over the bootstrap resamples of the judged (log) quantity,
so the target half-width reads as a relative error (0.1 ~ +-10%). rho is confined to (0, 1] in
the unified law: resamples of a capacity near 1 pile up at the bound, and the draws of a ratio or
difference are then skewed. A percentile interval needs no symmetry (and is the same on the log or
the ratio scale, since exp is monotone), so it is kept as is; `Answer.at_bound` reports the share
of resamples in which a rho the question uses sits at 1. When that share exceeds the interval's
tail (1 - level) / 2, the interval's end on that side is the bound itself, not an estimate: read
it as a one-sided statement (`Answer.bound_limited`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from compscale import laws

KINDS = ("composition", "rho", "order", "predict")
AT_BOUND = 1.0 - 1e-6  # a rho draw at least this is at the unified law's bound of 1


@dataclass(frozen=True)
class Question:
    """A parsed question: its kind, the formats it names, and for `predict` the point (N, D)."""

    kind: str
    formats: tuple[str, ...]
    params: float = math.nan
    tokens: float = math.nan

    @property
    def text(self) -> str:
        if self.kind == "predict":
            return f"predict {self.params:g} {self.tokens:g} {self.formats[0]}"
        return " ".join((self.kind, *self.formats))

    def needed(self, dense: str = laws.DENSE) -> tuple[str, ...]:
        """The formats the sweep must train to answer it (dense anchors every rho)."""
        if self.kind == "composition":
            return (dense, *self.formats, "+".join(self.formats))
        return tuple(dict.fromkeys((dense, *self.formats)))

    @property
    def judged_on_sign(self) -> bool:
        """`order` is decided by signs (every interval excludes 0), the others by a width."""
        return self.kind == "order"


def parse_question(text: str, canonical=None) -> Question:
    """`composition A B`, `rho F`, `order F1 F2 ...` or `predict N D F`; a ValueError says what
    was expected. `canonical(name)` spells each format as cell ids do (default: as written)."""
    words = str(text).split()
    canonical = canonical or (lambda name: name)
    if not words or words[0] not in KINDS:
        raise ValueError(f"expected one of {', '.join(KINDS)} and its arguments, got {text!r}")
    kind, rest = words[0], words[1:]
    expected = {"composition": "two formats A B", "rho": "one format", "predict": "N D FORMAT"}
    if (kind == "composition" and len(rest) != 2) or (kind == "rho" and len(rest) != 1):
        raise ValueError(f"{kind}: expected {expected[kind]}, got {text!r}")
    if kind == "order" and len(rest) < 2:
        raise ValueError(f"order: expected two or more formats, got {text!r}")
    if kind == "predict":
        if len(rest) != 3:
            raise ValueError(f"predict: expected {expected[kind]}, got {text!r}")
        try:
            params, tokens = float(rest[0]), float(rest[1])
        except ValueError:
            raise ValueError(f"predict: N and D must be numbers, got {text!r}") from None
        if not (params > 0 and tokens > 0 and math.isfinite(params * tokens)):
            raise ValueError(f"predict: N and D must be positive, got {text!r}")
        return Question(kind, (canonical(rest[2]),), params, tokens)
    formats = tuple(canonical(name) for name in rest)
    if kind == "order" and len(set(formats)) != len(formats):
        raise ValueError(f"order: a format is named twice in {text!r}")
    if kind == "composition" and any("+" in name for name in formats):
        raise ValueError(f"composition: expected two single formats A and B, got {text!r}")
    return Question(kind, formats)


@dataclass(frozen=True)
class Answer:
    """A question's number and interval at `level`.

    `estimate`, `low`, `high` are on the reported scale (ratio, rho, loss; for `order` the log-rho
    difference of the least decided pair); `half_width` on the judged log scale. `pairs`
    (order only): every adjacent pair's (estimate, low, high). `at_bound`: share of resamples with
    a used rho at the bound 1; `bound_limited`: that share reaches past the interval's tail.
    """

    question: str
    estimate: float
    low: float
    high: float
    half_width: float
    level: float
    at_bound: float
    bound_limited: bool
    pairs: tuple[tuple[float, float, float], ...] = ()

    def decided(self, target: float | None) -> bool:
        """Width questions: half-width <= target; `order`: every pair's interval excludes 0."""
        if self.pairs:
            return all(low > 0 or high < 0 for _, low, high in self.pairs)
        return target is not None and math.isfinite(self.half_width) and self.half_width <= target


def judged(question: Question, fit: laws.FitResult) -> tuple[np.ndarray, np.ndarray]:
    """The judged (log-scale) quantities at the fit's optimum and in every resample:
    (quantities,), (resamples x quantities). One quantity, or one per adjacent pair (`order`)."""
    samples = fit.bootstrap_samples
    names = fit.names
    missing = [name for name in question.needed(fit.fitted.dense) if name not in fit.rho]
    if missing:
        raise ValueError(f"question {question.text!r}: the fit has no format {missing[0]}")

    def rho(name: str) -> tuple[float, np.ndarray]:
        return math.log(fit.rho[name]), np.log(samples[:, names.index(f"rho[{name}]")])

    if question.kind == "composition":
        a, b = question.formats
        (va, da), (vb, db), (vc, dc) = rho(a), rho(b), rho(f"{a}+{b}")
        return np.array([vc - va - vb]), (dc - da - db)[:, None]
    if question.kind == "rho":
        value, draws = rho(question.formats[0])
        return np.array([value]), draws[:, None]
    if question.kind == "order":
        logs = [rho(name) for name in question.formats]
        values = np.array([hi[0] - lo[0] for lo, hi in itertools.pairwise(logs)])
        draws = np.column_stack([hi[1] - lo[1] for lo, hi in itertools.pairwise(logs)])
        return values, draws
    base = {name: samples[:, names.index(name)] for name in laws.BASE_NAMES}
    value = math.log(
        float(fit.fitted.predict([question.params], [question.tokens], [question.formats[0]])[0])
    )
    _, log_rho = rho(question.formats[0])
    draws = np.log(
        base["A"] * (question.params * np.exp(log_rho)) ** -base["alpha"]
        + base["B"] * question.tokens ** -base["beta"]
        + base["E"]
    )
    return np.array([value]), draws[:, None]


def answer(question: Question, fit: laws.FitResult, level: float = 0.95) -> Answer:
    """The question's estimate and percentile interval at `level` over the fit's resamples."""
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level}")
    if fit.bootstrap_samples.shape[0] < 2:
        raise ValueError("bootstrap: an interval needs a fit with bootstrap resamples")
    values, draws = judged(question, fit)
    tail = (1 - level) / 2
    low, high = np.percentile(draws, [100 * tail, 100 * (1 - tail)], axis=0)
    used = [n for n in question.needed(fit.fitted.dense) if n != fit.fitted.dense]
    columns = [fit.names.index(f"rho[{name}]") for name in used]
    hit = (fit.bootstrap_samples[:, columns] >= AT_BOUND).any(axis=1)
    at_bound = float(hit.mean())
    common = dict(level=level, at_bound=at_bound, bound_limited=at_bound > tail)
    if question.kind == "order":
        rows = zip(values, low, high, strict=True)
        pairs = tuple((float(v), float(lo), float(hi)) for v, lo, hi in rows)
        half = (high - low) / 2
        closeness = np.abs((low + high) / 2) / np.where(half > 0, half, np.inf)
        worst = int(np.argmin(closeness))
        return Answer(
            question.text,
            float(values[worst]),
            float(low[worst]),
            float(high[worst]),
            float(half[worst]),
            pairs=pairs,
            **common,
        )
    scale = math.exp
    return Answer(
        question.text,
        scale(float(values[0])),
        scale(float(low[0])),
        scale(float(high[0])),
        float(high[0] - low[0]) / 2,
        **common,
    )
