"""From a sweep's result rows to the paper's tables: the unified law, every format's capacity rho,
the tanh(GMSE) capacity law, the composition check, and the error on held-out cells.

Pure function of a DataFrame (never touches the store); `Reduction.write` puts Parquet and JSON
beside the sweep, `Reduction.read` loads them back so reports can be regenerated without refitting.
Every prediction downstream (held-out cells, figures) goes through the reduction's `FittedLaw`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from io import StringIO
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from compscale import capacity, laws
from compscale.files import atomic_write, write_text_atomic

REQUIRED_COLUMNS = ("params", "tokens", "format", "seed", "val_loss")
TABLES = ("law", "rho", "capacity", "capacity_rho", "bound", "composition", "heldout")
SELECTION = "selection"  # written only when `FitOptions.select` asked for it
JSON_NAME = "reduction.json"
Fitted = TypeVar("Fitted")


@dataclass(frozen=True)
class ReductionMetrics:
    """The reduction's scalars: what was fitted to how many cells, how well, and its warnings.

    NaN means not measured (one seed per cell, or no held-out cells); JSON holds it as null.
    """

    law: str
    cells: int
    formats: int
    seeds: int
    bootstrap: int
    delta: float
    objective: float
    rmse_log_loss: float
    mean_abs_rel_error: float
    seed_noise_log_loss: float
    tolerance: float
    holdout_fraction: float
    heldout_cells: int
    heldout_rmse_log_loss: float
    heldout_mean_abs_rel_error: float
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Strict JSON (no NaN or infinity): such floats become null."""
        document = {item.name: getattr(self, item.name) for item in fields(self)}
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in document.items()
        } | {"warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, document: Mapping) -> ReductionMetrics:
        values = {key: math.nan if value is None else value for key, value in document.items()}
        return cls(**values | {"warnings": tuple(document.get("warnings", ()))})


@dataclass(frozen=True)
class Reduction:
    """The reducer's tables (pandas), its fitted law and its metrics; see `reduce`."""

    law: pd.DataFrame
    rho: pd.DataFrame
    capacity: pd.DataFrame
    capacity_rho: pd.DataFrame
    bound: pd.DataFrame
    composition: pd.DataFrame
    heldout: pd.DataFrame
    fitted: laws.FittedLaw
    metrics: ReductionMetrics
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)
    # the unified fit itself, bootstrap draws included (`compscale.questions` reads them); not
    # written: a reduction read back from disk has None
    unified: laws.FitResult | None = field(default=None, repr=False, compare=False)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Each table as `<name>.parquet`, everything as `reduction.json`; atomic renames."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        names = TABLES + ((SELECTION,) if not self.selection.empty else ())
        for name in names:
            path = out / f"{name}.parquet"
            atomic_write(path, getattr(self, name).to_parquet)
            written.append(path)
        document = {"metrics": self.metrics.to_dict(), "fitted": self.fitted.to_dict()} | {
            name: json.loads(getattr(self, name).to_json(orient="records")) for name in names
        }
        path = out / JSON_NAME
        write_text_atomic(path, json.dumps(document, indent=2, allow_nan=False))
        written.append(path)
        return written

    @classmethod
    def read(cls, out_dir: str | Path) -> Reduction:
        out = Path(out_dir)
        if not (out / JSON_NAME).exists():
            raise FileNotFoundError(f"{out / JSON_NAME}: no reduction here; run the reducer first")
        document = json.loads((out / JSON_NAME).read_text())
        if "fitted" not in document or "bound" not in document:
            raise ValueError(
                f"{out / JSON_NAME}: written by an older compscale (no fitted law or bound table); "
                "refit (`compscale reduce`, or `compscale report --refit`)"
            )
        tables = {name: pd.read_parquet(out / f"{name}.parquet") for name in TABLES}
        if (out / f"{SELECTION}.parquet").exists():
            tables[SELECTION] = pd.read_parquet(out / f"{SELECTION}.parquet")
        return cls(
            **tables,
            fitted=laws.FittedLaw.from_dict(document["fitted"]),
            metrics=ReductionMetrics.from_dict(document["metrics"]),
        )

    def summary(self) -> str:
        """The tables as text (rich), with the warnings last."""
        from rich.console import Console
        from rich.table import Table

        buffer = StringIO()
        console = Console(
            file=buffer, width=120, force_terminal=False, color_system=None, markup=False
        )
        m = self.metrics
        console.print(
            f"{m.law} law over {m.cells} cells, {m.formats} formats; "
            f"Huber delta {m.delta} on log loss; {m.bootstrap} bootstrap resamples "
            "(cells resampled within each format), 95% percentile CIs"
        )
        for name, title in (
            ("law", "Law parameters"),
            ("rho", "Capacity rho per format"),
            ("capacity", "Capacity law rho = L tanh(F log_1/4 GMSE)^C"),
            ("capacity_rho", "Capacity law: fitted vs predicted rho (loo = law fitted without it)"),
            ("composition", "Composition: rho(A+B) vs rho(A) rho(B)"),
            (SELECTION, "Law forms: leave-one-size-out held-out RMSE of log loss"),
        ):
            frame = getattr(self, name)
            if frame.empty:
                continue
            if name == "composition":
                frame = frame[["format", "rho", "rho_product", "ratio", "ratio_ci_low"]].assign(
                    ratio_ci_high=frame["ratio_ci_high"], flagged=frame["flagged"]
                )
            table = Table(title=title)
            for column in frame.columns:
                table.add_column(str(column), justify="right")
            for row in frame.itertuples(index=False):
                table.add_row(*(_cell_text(value) for value in row))
            console.print(table)
        console.print(
            f"fit error over all cells: RMSE of log loss {_cell_text(m.rmse_log_loss)}, "
            f"mean |pred/obs - 1| {_cell_text(m.mean_abs_rel_error)}; seed-to-seed std of "
            f"log loss {_cell_text(m.seed_noise_log_loss)}"
        )
        console.print(
            f"held-out ({m.heldout_cells} cells, fit on the rest): RMSE of log loss "
            f"{_cell_text(m.heldout_rmse_log_loss)}, mean |pred/obs - 1| "
            f"{_cell_text(m.heldout_mean_abs_rel_error)}"
        )
        for text in m.warnings:
            console.print(f"warning: {text}")
        return buffer.getvalue()


def _cell_text(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _default_gmse(name: str) -> float:
    from compscale.gmse import gmse

    return gmse(name)


def _default_bits(name: str) -> float:
    from compscale.formats import parse

    return float(parse(name).bits_per_param)


def _heldout_split(results: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out rows: `fraction` of each format's cells, at random, >= 2 kept."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(results), dtype=bool)
    for _, rows in results.groupby("format").indices.items():
        count = min(round(fraction * len(rows)), len(rows) - 2)
        if count > 0:
            held[rng.choice(rows, size=count, replace=False)] = True
    return held


def _seed_noise(results: pd.DataFrame) -> float:
    """Pooled std of log loss between seeds of the same (N, D, format); NaN with one seed each."""
    log_loss = np.log(results["val_loss"])
    groups = log_loss.groupby([results["params"], results["tokens"], results["format"]])
    dof = int((groups.count() - 1).clip(lower=0).sum())
    if dof == 0:
        return math.nan
    return float(math.sqrt(float(groups.var(ddof=1).fillna(0) @ (groups.count() - 1)) / dof))


def _default_parts(gmse_of: Callable[[str], float] | None) -> Callable[[str], tuple]:
    """Each format's (family, GMSE) parts: from the grammar, or one part of `gmse_of`'s GMSE."""
    if gmse_of is None:
        from compscale.gmse import parts_of

        return parts_of
    return lambda name: (("quantization", float(gmse_of(name))),)


def pairable(results: pd.DataFrame) -> bool:
    """Whether a paired fit applies: some (N, D) has two seeds, and every (N, D, seed) group
    has every format (a group without a format would pair nothing for it)."""
    groups = results.groupby(["params", "tokens", "seed"])["format"].nunique()
    seeds = results.groupby(["params", "tokens"])["seed"].nunique()
    return bool(seeds.max() > 1 and (groups == results["format"].nunique()).all())


def unified_fit(
    results: pd.DataFrame,
    options: laws.FitOptions,
    *,
    warm_starts: Sequence[np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> laws.FitResult:
    """The unified law fitted to result rows as `reduce` fits it (and `compscale.questions`
    asks it): paired over (N, D, seed) when `options.paired` says so or, left None, when
    `pairable`, with the cells resampled by group. (`warm_starts` skip the start grid; `reduce`
    starts from the grid, so leave them out where the two must agree to the digit.)"""
    results = results.reset_index(drop=True)
    results = results.assign(format=results["format"].astype(str))
    paired = pairable(results) if options.paired is None else options.paired
    return laws.fit(
        results["params"],
        results["tokens"],
        results["val_loss"],
        results["format"],
        law="unified",
        options=options,
        warm_starts=warm_starts,
        progress=progress,
        paired_seeds=results["seed"] if paired else None,
    )


def reduce(
    results: pd.DataFrame,
    options: laws.FitOptions | None = None,
    *,
    gmse_of: Callable[[str], float] | None = None,
    bits_of: Callable[[str], float] | None = None,
    parts_of: Callable[[str], tuple[capacity.Part, ...]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Reduction:
    """Fit the unified law to result rows (one per cell) and derive every table of the paper.

    Tables: `law` (A, alpha, B, beta, E with 95% intervals and a `note` where a parameter sits
    at a bound or is not identified), `rho` (per format: rho, interval, note, GMSE, effective
    bits, bits per parameter, cells), `capacity` (the capacity law's L, F, C two ways, side by
    side: `two_stage`, fitted to the rhos weighted by their bootstrap uncertainty, and `joint`,
    the unified-gmse law fitted to every cell at once), `capacity_rho` (each format's rho fitted,
    by the two-stage law, by the joint law, and by the two-stage law fitted without it),
    `bound` (each format against the compression lower bound at its bits per parameter),
    `composition` (pairs flagged when the ratio's CI misses 1 by more than `options.tolerance`),
    `heldout` (`options.holdout_fraction` of the cells, predicted by a fit to the others), and,
    with `options.select`, `selection` (every law form's leave-one-size-out held-out error).
    `fitted`: the unified law with every format's parts and the two-stage capacity law, so it
    predicts formats that were never trained too. `options` (`laws.FitOptions`) says how every
    fit is made; `options.paired` = None pairs seeds when `pairable`. `gmse_of(format)` gives
    the GMSE column (default `compscale.gmse.gmse`), `parts_of(format)` the capacity law's parts
    (default the grammar's components; one quantization part of `gmse_of`'s GMSE when only that
    is given). `progress(stage, done, total)` hears of each bootstrap.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in results.columns]
    if missing:
        raise ValueError(f"results: missing column(s) {', '.join(missing)}")
    options = options or laws.FitOptions()
    if not 0 <= options.holdout_fraction < 1:
        raise ValueError(f"holdout_fraction: must be in [0, 1), got {options.holdout_fraction}")
    results = results.reset_index(drop=True)
    results = results.assign(format=results["format"].astype(str))
    parts_of = parts_of or _default_parts(gmse_of)
    gmse_of = gmse_of or _default_gmse
    bits_of = bits_of or _default_bits

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(name, done, total))

    fit = unified_fit(results, options, progress=stage("unified law"))
    formats = list(fit.rho)
    compressed = [name for name in formats if name != options.dense]
    parts = {name: tuple(parts_of(name)) for name in compressed}
    gmse = {name: 0.0 if name == options.dense else float(gmse_of(name)) for name in formats}
    bits = {name: float(bits_of(name)) for name in formats}
    law_table = _parameter_table(fit, list(fit.params))
    rho_table = _parameter_table(fit, [f"rho[{name}]" for name in formats])
    rho_table = rho_table.drop(columns="parameter").rename(columns={"value": "rho"})
    rho_table.insert(0, "format", formats)
    cells = results["format"].value_counts()
    rho_table = rho_table.assign(
        gmse=[gmse[name] for name in formats],
        effective_bits=[float(capacity.effective_bits(gmse[name])) for name in formats],
        bits_per_param=[bits[name] for name in formats],
        cells=[int(cells[name]) for name in formats],
    )
    samples = {name: fit.bootstrap_samples[:, fit.names.index(f"rho[{name}]")] for name in formats}
    two_stage, two_stage_warnings = _two_stage(fit, compressed, parts, samples, options)
    joint, joint_warnings = _joint(results, fit, parts, options, stage("joint capacity law"))
    capacity_table, capacity_rho = _capacity_tables(fit, compressed, parts, two_stage, joint)
    fitted = replace(
        fit.fitted,
        parts={name: [list(part) for part in value] for name, value in parts.items()},
        capacity={} if two_stage is None else {g: list(v) for g, v in two_stage.law.params.items()},
    )
    composition = capacity.composition_table(
        fit.rho, samples if options.bootstrap else None, tolerance=options.tolerance
    )
    composition_warnings = [
        f"composition {row.format}: rho {row.rho:.4g} vs product {row.rho_product:.4g} "
        f"(ratio CI [{row.ratio_ci_low:.4g}, {row.ratio_ci_high:.4g}]) is not multiplicative"
        for row in composition[composition["flagged"]].itertuples()
    ]
    heldout, heldout_warnings = _heldout(results, fit, options)
    selection = pd.DataFrame()
    if options.select:
        from compscale.laws.selection import leave_one_size_out

        scores = leave_one_size_out(
            results["params"], results["tokens"], results["val_loss"], results["format"],
            options=options, parts=parts,
        )  # fmt: skip
        selection = pd.DataFrame([asdict(score) for score in scores])
    heldout_rmse, heldout_error = _heldout_errors(heldout)
    metrics = ReductionMetrics(
        law=fit.law,
        cells=len(results),
        formats=len(formats),
        seeds=int(results["seed"].nunique()),
        bootstrap=options.bootstrap,
        delta=options.delta,
        objective=fit.objective,
        rmse_log_loss=fit.fit_error["rmse_log_loss"],
        mean_abs_rel_error=fit.fit_error["mean_abs_rel_error"],
        seed_noise_log_loss=_seed_noise(results),
        tolerance=options.tolerance,
        holdout_fraction=options.holdout_fraction,
        heldout_cells=len(heldout),
        heldout_rmse_log_loss=heldout_rmse,
        heldout_mean_abs_rel_error=heldout_error,
        warnings=(
            *fit.warnings,
            *two_stage_warnings,
            *joint_warnings,
            *composition_warnings,
            *heldout_warnings,
        ),
    )
    return Reduction(
        law=law_table,
        rho=rho_table,
        capacity=capacity_table,
        capacity_rho=capacity_rho,
        bound=_bound_table(fit, compressed, bits, two_stage, joint),
        composition=composition,
        heldout=heldout,
        fitted=fitted,
        metrics=metrics,
        selection=selection,
        unified=fit,
    )


def _parameter_table(fit: laws.FitResult, names: list[str]) -> pd.DataFrame:
    """value, 95% interval and note per parameter; a parameter that is not identified shows
    no number, only its note (why)."""
    values = fit.params | {f"rho[{k}]": v for k, v in fit.rho.items()}
    rows = []
    for name in names:
        low, high = fit.ci.get(name, (math.nan, math.nan))
        value = values[name]
        if not fit.identified(name):
            value = low = high = math.nan
        rows.append((name, value, low, high, fit.notes.get(name, "")))
    return pd.DataFrame(rows, columns=["parameter", "value", "ci_low", "ci_high", "note"])


def _attempt(failure: str, sub_fit: Callable[[], Fitted]) -> tuple[Fitted | None, list[str]]:
    """A sub-fit's value, or None and a warning `failure: why` when the cells cannot support it
    (it raises ValueError): a reduction reports what it could not fit instead of failing."""
    try:
        return sub_fit(), []
    except ValueError as error:
        return None, [f"{failure}: {error}"]


def _two_stage(
    fit: laws.FitResult,
    compressed: list[str],
    parts: dict[str, tuple],
    samples: dict[str, np.ndarray],
    options: laws.FitOptions,
) -> tuple[capacity.CapacityFit | None, list[str]]:
    """The capacity law fitted to the per-format rhos, weighted by their bootstrap spread."""
    usable = [name for name in compressed if fit.identified(f"rho[{name}]")]
    draws = (
        np.column_stack([samples[name] for name in usable])
        if options.bootstrap and usable
        else None
    )
    law, warnings = _attempt(
        "capacity law (two-stage) not fitted",
        lambda: capacity.fit_capacity(
            usable,
            [fit.rho[name] for name in usable],
            [parts[name] for name in usable],
            rho_samples=draws,
            bootstrap=options.bootstrap,
            seed=options.seed,
        ),
    )
    if law is not None:
        warnings += [f"capacity law (two-stage): {name} sits at its bound" for name in law.at_bound]
    return law, warnings


def _joint(
    results: pd.DataFrame,
    fit: laws.FitResult,
    parts: dict[str, tuple],
    options: laws.FitOptions,
    progress: Callable[[int, int], None] | None,
) -> tuple[laws.FitResult | None, list[str]]:
    """The unified-gmse law on every cell, started from the unified fit's A, alpha, B, beta, E
    (and its runner-up's): the capacity law's starts vary, the base needs no second grid."""
    bases = [fit.theta[:5]] + ([fit.runner_up[:5]] if fit.runner_up is not None else [])
    groups = capacity.parameter_groups(parts.values())
    starts = [
        np.concatenate([base, extra])
        for base in bases
        for extra in capacity.law_starts(len(groups))
    ]
    joint, warnings = _attempt(
        "capacity law (joint, unified-gmse) not fitted",
        lambda: laws.fit(
            results["params"],
            results["tokens"],
            results["val_loss"],
            results["format"],
            law="unified-gmse",
            options=options,
            parts=parts,
            warm_starts=starts,
            progress=progress,
        ),
    )
    if joint is not None:
        warnings += [f"joint unified-gmse law: {text}" for text in joint.warnings]
    return joint, warnings


def _capacity_tables(
    fit: laws.FitResult,
    compressed: list[str],
    parts: dict[str, tuple],
    two_stage: capacity.CapacityFit | None,
    joint: laws.FitResult | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """L, F, C both ways side by side, and each format's rho by each law."""
    names = list(
        dict.fromkeys(
            (two_stage.names if two_stage else ())
            + (tuple(n for n in joint.params if n not in laws.BASE_NAMES) if joint else ())
        )
    )
    nan2 = (math.nan, math.nan)
    rows = []
    for name in names:
        row = {"parameter": name}
        if two_stage is not None and name in two_stage.values:
            low, high = two_stage.ci.get(name, nan2)
            note = "at its bound" if name in two_stage.at_bound else ""
            row |= {"two_stage": two_stage.values[name], "two_stage_ci_low": low}
            row |= {"two_stage_ci_high": high, "two_stage_note": note}
        if joint is not None and name in joint.params:
            low, high = joint.ci.get(name, nan2)
            value = joint.params[name] if joint.identified(name) else math.nan
            row |= {"joint": value, "joint_ci_low": low, "joint_ci_high": high}
            row |= {"joint_note": joint.notes.get(name, "")}
        rows.append(row)
    columns = ["parameter", "two_stage", "two_stage_ci_low", "two_stage_ci_high", "two_stage_note"]
    columns += ["joint", "joint_ci_low", "joint_ci_high", "joint_note"]
    table = pd.DataFrame(rows, columns=columns)
    loo = (
        capacity.leave_one_out(
            two_stage.formats,
            two_stage.rho,
            [parts[name] for name in two_stage.formats],
            two_stage.log_rho_sd,
            tuple(two_stage.law.params),
        )
        if two_stage is not None
        else []
    )
    loo_of = dict(zip(two_stage.formats if two_stage else (), loo, strict=True))
    comparison = pd.DataFrame(
        {
            "format": compressed,
            "parts": [_parts_text(parts[name]) for name in compressed],
            "rho": [fit.rho[name] for name in compressed],
            "rho_law": [two_stage.law.rho(parts[n]) if two_stage else math.nan for n in compressed],
            "rho_joint": [joint.rho[name] if joint else math.nan for name in compressed],
            "rho_loo": [loo_of.get(name, math.nan) for name in compressed],
        }
    )
    return table, comparison


def _parts_text(parts: tuple) -> str:
    return " x ".join(f"{family} (GMSE {gmse:.3g})" for family, gmse in parts)


def _bound_table(
    fit: laws.FitResult,
    compressed: list[str],
    bits: dict[str, float],
    two_stage: capacity.CapacityFit | None,
    joint: laws.FitResult | None,
) -> pd.DataFrame:
    """Each format against the compression lower bound: the capacity law at the best GMSE any
    format of its bits per parameter can have (Gaussian rate-distortion, GMSE = 4^-bits)."""
    law = two_stage.law if two_stage is not None else (joint.fitted.capacity_law if joint else None)
    columns = ["format", "bits_per_param", "rho", "rho_bound", "fraction_of_bound"]
    if law is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for name in compressed:
        bound = law.bound(bits[name])
        rows.append((name, bits[name], fit.rho[name], bound, fit.rho[name] / bound))
    return pd.DataFrame(rows, columns=columns)


def _heldout_errors(heldout: pd.DataFrame) -> tuple[float, float]:
    """RMSE of log(predicted / observed) and mean |predicted / observed - 1|; NaN without cells."""
    if heldout.empty:
        return math.nan, math.nan
    ratio = heldout["predicted"].to_numpy(dtype=float) / heldout["observed"].to_numpy(dtype=float)
    return float(np.sqrt(np.mean(np.log(ratio) ** 2))), float(np.mean(np.abs(ratio - 1)))


def _heldout(
    results: pd.DataFrame, fit: laws.FitResult, options: laws.FitOptions
) -> tuple[pd.DataFrame, list[str]]:
    """Held-out cells with the loss predicted by the law fitted to the other cells (started from
    the full fit's optimum and runner-up: the same basins, without a second grid)."""
    columns = ["params", "tokens", "format", "seed", "observed", "predicted", "rel_error"]
    held = _heldout_split(results, options.holdout_fraction, options.seed)
    if not held.any():
        return pd.DataFrame(columns=columns), []
    train, test = results[~held], results[held]
    starts = [fit.theta] + ([fit.runner_up] if fit.runner_up is not None else [])
    heldout_fit, warnings = _attempt(
        "held-out check skipped: the cells left for fitting fail",
        lambda: laws.fit(
            train["params"],
            train["tokens"],
            train["val_loss"],
            train["format"],
            law="unified",
            options=replace(options, bootstrap=0),
            warm_starts=starts if train["format"].nunique() == len(fit.rho) else None,
        ),
    )
    if heldout_fit is None:
        return pd.DataFrame(columns=columns), warnings
    predicted = heldout_fit.fitted.predict(test["params"], test["tokens"], test["format"])
    observed = test["val_loss"].to_numpy()
    return pd.DataFrame(
        {
            "params": test["params"].to_numpy(),
            "tokens": test["tokens"].to_numpy(),
            "format": test["format"].to_numpy(),
            "seed": test["seed"].to_numpy(),
            "observed": observed,
            "predicted": predicted,
            "rel_error": predicted / observed - 1,
        }
    ), warnings
