"""Adaptive design: the proposal is a sweep `submit` runs, within budget, and on sweeps simulated
from a known law its cells shrink the rho intervals more than random cells of the same FLOPs."""

import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compscale import capacity, laws
from compscale.advise import Ensemble, fit_ensemble, loss
from compscale.design import Candidate, propose, random_picks
from orchestrator.cells import expand
from orchestrator.cli import main
from orchestrator.spec import load_spec, parse_spec
from orchestrator.store import RESULT_SCHEMA, Store

BASE = {"A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28, "E": 1.69}
RHO = {"dense": 1.0, "int4": 0.85, "int2": 0.4, "sp50": 0.9}
SIZES = (1e6, 3e6, 1e7, 3e7, 1e8)
RATIOS = (10, 30, 100)
NOISE = 0.01


def simulate(cells: list[Candidate], rng: np.random.Generator) -> pd.DataFrame:
    """Result rows of `cells`: the known law's loss times exp(N(0, NOISE))."""
    values = [float(loss(*BASE.values(), RHO[c.format], c.params, c.tokens)) for c in cells]
    noisy = np.array(values) * np.exp(rng.normal(0, NOISE, len(cells)))
    return pd.DataFrame(
        {
            "params": [c.params for c in cells],
            "tokens": [c.tokens for c in cells],
            "format": [c.format for c in cells],
            "val_loss": noisy,
        }
    )


def truth() -> np.ndarray:
    """The known law in fit coordinates (formats in the fit's order: dense, then sorted)."""
    A, alpha, B, beta, E = BASE.values()
    u = [capacity.u_of_rho(RHO[name]) for name in sorted(set(RHO) - {"dense"})]
    return np.array([math.log(A), alpha, math.log(B), beta, math.log(E), *u])


def grid(sizes, ratios) -> list[Candidate]:
    return [Candidate(n, n * r, f) for f in RHO for n in sizes for r in ratios]


def test_a_format_with_wide_rho_draws_gets_the_cells():
    rng = np.random.default_rng(0)
    names = (*laws.BASE_NAMES, *(f"rho[{name}]" for name in RHO))
    centre = np.array([*BASE.values(), *RHO.values()])
    spread = np.full(len(centre), 0.01)
    spread[names.index("rho[int2]")] = 0.3  # int2's capacity is the one the cells leave open
    samples = centre * np.exp(rng.normal(0, 1, (50, len(centre))) * spread)
    samples[:, names.index("rho[dense]")] = 1.0
    fitted = laws.FittedLaw("unified", *BASE.values(), rho=dict(RHO))
    ensemble = Ensemble(fitted, samples, names, None, (1e6, 1e8), (1e7, 1e10), NOISE)
    candidates = grid(SIZES[:2], RATIOS[:1])
    proposal = propose(ensemble, candidates, budget_flops=10 * 6e13)
    assert candidates[proposal.picks[0]].format == "int2"
    assert proposal.flops <= 10 * 6e13
    widths = dict(zip(proposal.targets, proposal.width_after / proposal.width_before, strict=True))
    assert widths["rho[int2]"] < 0.5 < widths["rho[int4]"]
    first_gain: dict[int, float] = {}
    for pick, gain in zip(proposal.picks, proposal.gains, strict=True):
        assert gain <= first_gain.setdefault(pick, gain)  # a second copy is worth less
    assert len(first_gain) < len(proposal.picks)
    capped = propose(ensemble, candidates, budget_flops=10 * 6e13, max_copies=1).picks
    assert len(capped) == len(set(capped)) > 1  # each cell once at most
    assert propose(ensemble, candidates, 6e13, target="law").targets == ["alpha", "beta"]
    with pytest.raises(ValueError, match="no composition quantities"):
        propose(ensemble, candidates, 6e13, target="composition")


@pytest.mark.slow  # over a few seconds
def test_proposed_cells_shrink_rho_intervals_more_than_random_cells_of_the_same_flops():
    start = grid(SIZES[:3], RATIOS[:2])
    candidates = grid(SIZES, RATIOS)
    budget = sum(c.flops for c in start)
    widths = {"design": [], "random": []}
    for seed in range(2):
        rng = np.random.default_rng(seed)
        first = simulate(start, rng)
        ensemble, fit = fit_ensemble(
            first, laws.FitOptions(bootstrap=20, seed=seed), warm_starts=[truth()]
        )
        warm = [fit.theta]  # warm starts skip the grid of starts: the test stays fast
        chosen = {
            "design": propose(ensemble, candidates, budget).picks,
            "random": random_picks(candidates, budget, rng),
        }
        for name, picks in chosen.items():
            more = simulate([candidates[i] for i in picks], rng)
            after, _ = fit_ensemble(
                pd.concat([first, more]), laws.FitOptions(bootstrap=20), warm_starts=warm
            )
            low, high = np.percentile(after.samples[:, 6:], [2.5, 97.5], axis=0)
            widths[name].append(float(np.mean(high - low)))
    assert np.mean(widths["design"]) < 0.8 * np.mean(widths["random"]), widths


SPEC = """\
name: syn
models:
  - {d_model: 24, n_layers: 4, n_heads: 2, train: {lr: 1.0e-2}}
  - tiny
  - 100k
tokens_per_param: [10, 25]
formats: [dense, int4, int2, sp50]
train: {batch_size: 8, eval_tokens: 131072}
data: {source: bundled}
"""


def fill(store: Store) -> list:
    """The SPEC sweep with every cell finished, losses from the known law."""
    cells = expand(parse_spec(SPEC))
    rng = np.random.default_rng(0)
    for cell in cells:
        value = float(loss(*BASE.values(), RHO[cell.format], cell.params, cell.tokens))
        observed = value * math.exp(rng.normal(0, NOISE))
        row = {
            "cell_id": cell.cell_id, "model": "x", "params": cell.params, "tokens": cell.tokens,
            "format": cell.format, "seed": cell.seed, "val_loss": observed,
            "train_loss": value, "steps": 10, "wall_time_s": 1.0, "tokens_per_s": 1.0,
            "hardware": "test", "world_size": 1, "attempt": 1, "data_fingerprint": "f",
            "finished_at": datetime.now(timezone.utc),
        }  # fmt: skip
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([row], schema=RESULT_SCHEMA), sink)
        store.write_atomic(store.layout.cell(cell.cell_id).result, sink.getvalue().to_pybytes())
    store.put_sweep("syn", SPEC, [cell.cell_id for cell in cells])
    return cells


def test_next_writes_a_sweep_that_submit_runs_within_the_budget(tmp_path, capsys):
    store = Store(tmp_path / "store")
    done = {cell.cell_id for cell in fill(store)}
    out, budget = tmp_path / "next.yaml", 3e12
    argv = ["next", "syn", "--store", store.uri, "--budget-flops", str(budget), "--out", str(out)]
    assert main([*argv, "--bootstrap", "20", "--jobs", "1"]) == 0
    spec = load_spec(out)  # valid; expanding it raises on a duplicate cell
    new = [cell for cell in expand(spec, str(out)) if cell.cell_id not in done]
    assert spec.name == "syn" and new and len(expand(spec)) == len(done) + len(new)
    assert sum(cell.flops for cell in new) <= budget
    text = capsys.readouterr().out
    assert "rho[int2]" in text and "->" in text and f"compscale submit {out}" in text
