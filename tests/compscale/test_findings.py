"""The paper's claims are judged by their stated criteria, and a CI too wide to decide says so."""

import pandas as pd
from helpers import metrics

from compscale import findings, laws
from compscale.reduce import Reduction


def reduction_with_pairs(*pairs: tuple[float, float, bool]) -> Reduction:
    composition = pd.DataFrame(
        [
            {"format": f"pair{i}", "parts": "a * b", "rho": 0.5, "rho_product": 0.5, "ratio": 1.0,
             "ratio_ci_low": low, "ratio_ci_high": high, "flagged": flagged}
            for i, (low, high, flagged) in enumerate(pairs)
        ]
    )  # fmt: skip
    empty = pd.DataFrame(columns=["format", "effective_bits", "rho", "rho_loo"])
    return Reduction(
        law=empty, rho=empty, capacity=empty, capacity_rho=empty, bound=empty,
        composition=composition, heldout=empty,
        fitted=laws.FittedLaw("unified", 1.0, 0.3, 1.0, 0.3, 1.0),
        metrics=metrics(heldout_mean_abs_rel_error=0.005, heldout_cells=4),
    )  # fmt: skip


def test_composition_verdicts_follow_the_ratio_ci():
    checks = findings.check(
        reduction_with_pairs((0.97, 1.05, False), (0.5, 2.0, False), (1.2, 1.4, True))
    )
    verdicts = [f.agrees for f in checks if "multiplicative" in f.claim]
    assert verdicts == [True, None, False]


def test_a_law_within_tolerance_agrees_and_missing_inputs_cannot_tell():
    checks = findings.check(reduction_with_pairs())
    law, order, capacity_law = checks
    assert law.agrees is True and "0.500%" in law.observed
    assert order.agrees is None and capacity_law.agrees is None
    table = findings.as_table(checks)
    assert list(table["verdict"]) == ["agrees", "cannot tell", "cannot tell"]
