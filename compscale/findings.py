"""The paper's claims checked against one sweep's reduction: agree, disagree, or cannot tell.

Each check states its criterion in words, so a report reader can see exactly what "agrees" means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from compscale.reduce import Reduction, ReductionMetrics

# A held-out loss within 1% (mean |predicted / observed - 1|) counts as the law predicting it.
HELDOUT_TOLERANCE = 0.01
# Capacity ordered by GMSE: Spearman correlation of rho with effective bits at least this.
ORDER_CORRELATION = 0.7
# The tanh law predicts a left-out format's rho within this relative error (median over formats).
LOO_TOLERANCE = 0.10
# A composition ratio whose 95% CI is wider than this cannot confirm or refute multiplicativity.
RATIO_CI_WIDTH = 0.5

SMALL_SCALE_CAVEAT = (
    "at this scale the loss gaps between formats are a few hundredths of a nat, close to "
    "seed-to-seed and learning-rate noise (docs/design.md, 'Small models are noisy'), and few "
    "token ratios leave E and alpha weakly identified"
)


@dataclass(frozen=True)
class Finding:
    """A claim of the paper, what this sweep shows, and whether they agree (None: cannot tell)."""

    claim: str
    criterion: str
    observed: str
    agrees: bool | None
    caveat: str = ""


def _verdict(agrees: bool | None) -> str:
    return {True: "agrees", False: "disagrees", None: "cannot tell"}[agrees]


def check(reduction: Reduction) -> list[Finding]:
    """Every claim this sweep can speak to, in the paper's order."""
    findings = [_law_predicts(reduction), _order_follows_gmse(reduction)]
    findings.append(_capacity_law_predicts(reduction))
    findings.extend(_composition(reduction))
    return findings


def _law_predicts(reduction: Reduction) -> Finding:
    metrics = reduction.metrics
    error = metrics.heldout_mean_abs_rel_error
    known = not math.isnan(error)
    return Finding(
        claim="One law with shared A, alpha, B, beta, E and one rho per format fits every format",
        criterion=f"held-out cells predicted within {HELDOUT_TOLERANCE:.0%} (mean |pred/obs - 1|)",
        observed=(
            f"held-out mean |pred/obs - 1| = {error:.3%} over {metrics.heldout_cells} "
            f"cells; in-sample RMSE of log loss {metrics.rmse_log_loss:.4f}; {_seed_noise(metrics)}"
            if known
            else "no held-out cells"
        ),
        agrees=bool(error <= HELDOUT_TOLERANCE) if known else None,
        caveat="" if not known or error <= HELDOUT_TOLERANCE else SMALL_SCALE_CAVEAT,
    )


def _seed_noise(metrics: ReductionMetrics) -> str:
    if math.isnan(metrics.seed_noise_log_loss):
        return "seed-to-seed noise not measured (one seed per cell)"
    return f"seed-to-seed std of log loss {metrics.seed_noise_log_loss:.4f}"


def _order_follows_gmse(reduction: Reduction) -> Finding:
    rho = reduction.rho
    compressed = rho[rho["effective_bits"].apply(np.isfinite) & rho["rho"].notna()]
    if len(compressed) < 3:
        return Finding(
            claim="Capacity rho falls as GMSE rises",
            criterion=f"Spearman correlation of rho with effective bits >= {ORDER_CORRELATION}",
            observed=f"only {len(compressed)} compressed formats",
            agrees=None,
        )
    correlation = float(spearmanr(compressed["effective_bits"], compressed["rho"]).statistic)
    ordered = compressed.sort_values("effective_bits")
    listing = ", ".join(f"{r.format} {r.rho:.3f}" for r in ordered.itertuples())
    agrees = correlation >= ORDER_CORRELATION
    return Finding(
        claim="Capacity rho falls as GMSE rises",
        criterion=f"Spearman correlation of rho with effective bits >= {ORDER_CORRELATION}",
        observed=f"Spearman {correlation:.2f}; rho by effective bits: {listing}",
        agrees=agrees,
        caveat="" if agrees else SMALL_SCALE_CAVEAT,
    )


def _capacity_law_predicts(reduction: Reduction) -> Finding:
    table = reduction.capacity_rho.dropna(subset=["rho_loo"])
    criterion = (
        f"median |rho_loo / rho - 1| <= {LOO_TOLERANCE:.0%}, rho_loo predicted from GMSE by the "
        "tanh law fitted without that format"
    )
    if table.empty:
        return Finding("rho follows L tanh(F log_1/4 GMSE)^C", criterion, "no formats", None)
    errors = (table["rho_loo"] / table["rho"] - 1).abs()
    median = float(errors.median())
    agrees = median <= LOO_TOLERANCE
    worst = table.loc[errors.idxmax(), "format"]
    return Finding(
        claim="rho follows L tanh(F log_1/4 GMSE)^C and predicts unseen formats",
        criterion=criterion,
        observed=f"median {median:.1%} over {len(table)} formats; worst {worst} {errors.max():.1%}",
        agrees=agrees,
        caveat="" if agrees else SMALL_SCALE_CAVEAT,
    )


def _composition(reduction: Reduction) -> list[Finding]:
    tolerance = reduction.metrics.tolerance
    findings = []
    for row in reduction.composition.itertuples():
        too_wide = row.ratio_ci_high - row.ratio_ci_low > RATIO_CI_WIDTH
        agrees = False if row.flagged else (None if too_wide else True)
        findings.append(
            Finding(
                claim=f"rho({row.format}) = {row.parts.replace('*', 'x')} (multiplicative)",
                criterion=f"the 95% CI of rho(A+B) / (rho(A) rho(B)) reaches within {tolerance:.0%}"
                f" of 1; a CI wider than {RATIO_CI_WIDTH} cannot tell",
                observed=(
                    f"rho {row.rho:.3f} vs product {row.rho_product:.3f}: ratio {row.ratio:.3f} "
                    f"[{row.ratio_ci_low:.3f}, {row.ratio_ci_high:.3f}]"
                ),
                agrees=agrees,
                caveat="" if agrees else SMALL_SCALE_CAVEAT,
            )
        )
    return findings


def as_table(findings: list[Finding]) -> pd.DataFrame:
    """Findings as one row each, for HTML and Markdown reports."""
    return pd.DataFrame(
        {
            "claim": [f.claim for f in findings],
            "criterion": [f.criterion for f in findings],
            "this sweep": [f.observed for f in findings],
            "verdict": [_verdict(f.agrees) for f in findings],
        }
    )
