"""`FitOptions`: how to fit, as one typed value that `fit`, `reduce` and every command that fits
take, so an option means the same and defaults the same everywhere, and a new one is one field."""

from __future__ import annotations

from dataclasses import dataclass

from compscale.laws.cells import DENSE


@dataclass(frozen=True)
class FitOptions:
    """How to fit a law and derive a reduction from it; which law to fit is the caller's choice
    (`fit`'s `law`; `reduce` fits the unified law, then the unified-gmse law jointly).

    `fit` reads the fields above `select`; the `fit` command and `reduce` read `select`; `reduce`
    reads them all and passes the fit's fields on to each of its fits. Defaults are the paper's
    method and the CLI's defaults.
    """

    dense: str = DENSE
    """Name of the dense reference format: its rho is 1, every capacity is relative to it."""

    delta: float = 1e-3
    """Huber delta on log loss (Besiroglu et al.'s 1e-3): residuals beyond it count linearly."""

    bootstrap: int = 200
    """Bootstrap resamples of cells for the 95% intervals; 0 fits the point estimate only."""

    seed: int = 0
    """Seed of the bootstrap resamples (and of `reduce`'s held-out split)."""

    jobs: int = 1
    """Processes the bootstrap runs in (spawned); 1 runs it in this process."""

    top_starts: int = 8
    """Grid starts polished per start of the law's extra parameters, best objective first (the
    best two with E near 0 and the best two with alpha <= 0.2 are polished too)."""

    method: str = "trf"
    """Polisher: "trf" (trust-region Huber least squares) or "lbfgs" (Besiroglu et al.'s
    L-BFGS-B; `benchmarks/fit_speed.py` compares them)."""

    unidentified_width: float = 1.0
    """A parameter whose 95% interval is wider than this times its value is warned of as weakly
    identified."""

    select: bool = False
    """Also score every law form by its leave-one-size-out held-out error
    (`compscale.laws.selection`), so a user sees which form the cells support; off by default:
    it refits each form once per model size."""

    holdout_fraction: float = 0.2
    """`reduce`: fraction of each format's cells held out and predicted by a fit to the rest."""

    tolerance: float = 0.02
    """`reduce`: a composition rho(A+B) / (rho(A) rho(B)) whose interval misses 1 by more than
    this is flagged as not multiplicative."""

    paired: bool | None = None
    """`reduce`: profile out a log-loss offset per (N, D, seed) group in the unified fit
    (`fit`'s `paired_seeds`); None pairs when `compscale.reduce.pairable` says it applies."""
