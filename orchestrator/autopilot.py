"""The autopilot of an adaptive sweep (a spec with `adaptive:`; docs/autopilot.md): rounds of
cells until the spec's question is answered.

Round 0 is the spec's own cells. After each round the driver fits the sweep's results as the
reducer does (`compscale.reduce.unified_fit`: the paired unified fit, bootstrap by group),
computes the question's interval at the stop rule's level (`compscale.stopping`), writes the
round's row (`orchestrator.rounds`) and either stops (target reached, last look, budget, no
candidate helps) or picks the next round's cells: whole (N, D, seed) groups, a new seed at one
of the spec's (N, D) or at a larger token budget, one cell of every format, chosen on the same
fit's bootstrap by `compscale.design.propose_groups`. The new cells are copies of a round-0 cell
of the same model and format with another seed and budget (same training settings, WSD horizon
and data), so they are ordinary content-hashed cells: the round's cells are recorded before they
run, added to the sweep's manifest and run by the same driver, which skips done ones. Everything
the loop knows is in the store, so a killed driver resumes at its round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from compscale import stopping
from compscale.design import Group, propose_groups, shared_noise
from compscale.laws import FitOptions
from compscale.questions import Answer, Question, answer, judged, parse_question
from compscale.reduce import unified_fit
from orchestrator import rounds
from orchestrator.spec import SpecError, SweepSpec, canonical_format
from orchestrator.store import Store
from workers.config import CellConfig
from workers.ladder import ladder_tokens, ladders

# The cells to run (the sweep's, done ones skipped) -> an exit code (0: all done).
RunCells = Callable[[list[CellConfig]], int]


def sweep_flops(cells: Sequence[CellConfig]) -> float:
    """FLOPs of training `cells` as `compscale plan` counts them: 6 N D per cell, a WSD
    ladder's shared trunk counted once."""
    total = 0.0
    for group in ladders(list(cells)):
        if group[0].train.schedule == "wsd":
            total += 6.0 * group[0].params * ladder_tokens(group)
        else:
            total += sum(cell.flops for cell in group)
    return total


def question_of(spec: SweepSpec) -> Question:
    return parse_question(spec.adaptive.question, canonical_format)


def stop_rule(spec: SweepSpec, cells: Sequence[CellConfig], source: str = "<spec>"):
    """The sweep's stop rule; a budget below round 0's cost is a SpecError naming the field."""
    adaptive = spec.adaptive
    try:
        looks = stopping.max_looks(adaptive.budget_flops, sweep_flops(cells), adaptive.round_flops)
    except ValueError as error:
        raise SpecError(f"{source}: adaptive.{error}") from None
    return stopping.StopRule(adaptive.target, looks, adaptive.level)


def all_cells(store: Store, sweep: str, spec_cells: list[CellConfig]) -> list[CellConfig]:
    """The spec's cells, then those every round so far added (in round order)."""
    known = {cell.cell_id for cell in spec_cells}
    cells = list(spec_cells)
    for _, added in sorted(rounds.added_cells(store, sweep).items()):
        cells += [cell for cell in added if cell.cell_id not in known]
        known |= {cell.cell_id for cell in added}
    return cells


@dataclass(frozen=True)
class Proposal:
    """The next round's cells, or why there are none (`stopping.BUDGET` or `stopping.NO_HELP`)."""

    cells: list[CellConfig]
    reason: str | None = None


def propose(
    spec: SweepSpec,
    spec_cells: Sequence[CellConfig],
    cells: Sequence[CellConfig],
    fit,
    results,
    question: Question,
    budget_flops: float,
) -> Proposal:
    """Whole (N, D, seed) groups that shrink the question's interval most per FLOP, within
    `budget_flops` (see the module docstring)."""
    adaptive = spec.adaptive
    bases: dict[tuple[str, str], CellConfig] = {}
    budgets: dict[str, set[int]] = {}
    for cell in sorted(spec_cells, key=lambda c: (c.seed, c.tokens)):
        model = cell.model.model_dump_json()
        bases.setdefault((model, cell.format), cell)
        budgets.setdefault(model, set()).add(cell.tokens)
    formats = list(spec.formats)
    seeds: dict[tuple[str, int], set[int]] = {}
    for cell in cells:
        seeds.setdefault((cell.model.model_dump_json(), cell.tokens), set()).add(cell.seed)
    options = sorted(
        {
            (model, round(tokens * factor))
            for model, values in budgets.items()
            for tokens in values
            for factor in adaptive.token_factors
        }
    )
    groups, caps, members = [], [], []
    for model, tokens in options:
        used = seeds.get((model, tokens), set())
        new_seed = max(used, default=-1) + 1
        group = [_copy(bases[(model, name)], tokens, new_seed) for name in formats]
        cost = sweep_flops([*cells, *group]) - sweep_flops(cells)
        groups.append(Group(group[0].params, tokens, tuple(formats), cost))
        caps.append(max(adaptive.max_seeds - len(used), 0))
        members.append((model, tokens, new_seed))
    if not any(g.cost <= budget_flops for g, cap in zip(groups, caps, strict=True) if cap > 0):
        affordable = any(g.cost <= budget_flops for g in groups)
        return Proposal([], stopping.NO_HELP if affordable else stopping.BUDGET)
    _, goals = judged(question, fit)
    own, shared = shared_noise(fit, results)
    proposal = propose_groups(
        goals, fit, groups, budget_flops, own_noise=own, shared_noise=shared, max_copies=caps
    )
    if not proposal.picks:
        return Proposal([], stopping.NO_HELP)
    picked, copies = [], {}
    for index in proposal.picks:
        model, tokens, first_seed = members[index]
        seed = first_seed + copies.get(index, 0)
        copies[index] = copies.get(index, 0) + 1
        picked += [_copy(bases[(model, name)], tokens, seed) for name in formats]
    return Proposal(picked)


def _copy(base: CellConfig, tokens: int, seed: int) -> CellConfig:
    """A cell like `base` (model, format, training settings, WSD horizon, data) at another
    budget and seed."""
    return CellConfig.model_validate(base.model_dump() | {"tokens": tokens, "seed": seed})


def describe(row: dict, target: float | None) -> str:
    """One line per round for the driver's output and `compscale status`."""
    goal = "every pair's interval excludes 0" if target is None else f"target {target:g}"
    text = (
        f"round {row['round']}: +{row['cells_added']} cells ({row['cells']} in all, "
        f"{row['flops']:.3g} FLOPs); {row['question']}: {row['estimate']:.4g} "
        f"[{row['low']:.4g}, {row['high']:.4g}] at {100 * row['level']:.2f}%, half-width "
        f"{row['half_width']:.3g} (log; {goal})"
    )
    if row["at_bound"] > 0:
        text += f"; {100 * row['at_bound']:.0f}% of resamples put a rho at its bound 1"
    return text + (f"; stopped: {row['stopped']}" if row["stopped"] else "")


def run(
    spec: SweepSpec,
    store: Store,
    spec_cells: list[CellConfig],
    run_cells: RunCells,
    say: Callable[[str], None] = print,
) -> int:
    """Run the adaptive loop from wherever the store says it is; the exit code of the last
    round's cells (0 when the loop stopped on its rule)."""
    adaptive, name = spec.adaptive, spec.name
    question = question_of(spec)
    rule = stop_rule(spec, spec_cells)
    done = store.round_rows(name)
    if done and done[-1]["stopped"]:
        say(f"sweep {name}: the autopilot stopped after round {done[-1]['round']}")
        say(describe(done[-1], adaptive.target))
        return 0
    cells = all_cells(store, name, spec_cells)
    added = rounds.added_cells(store, name)
    round_index, fit, results = len(done), None, None
    say(
        f"sweep {name}: autopilot on {question.text!r}; at most {rule.looks} looks, each at "
        f"{100 * rule.look_level:.2f}% (Bonferroni: {100 * adaptive.level:g}% over all looks)"
    )
    while True:
        if round_index > 0 and round_index not in added:
            if fit is None:  # a driver killed between a round's row and the next round's cells
                results = store.results(name)
                fit = unified_fit(
                    results, FitOptions(bootstrap=adaptive.bootstrap, seed=adaptive.seed)
                )
            left = min(adaptive.round_flops, adaptive.budget_flops - sweep_flops(cells))
            proposal = propose(spec, spec_cells, cells, fit, results, question, left)
            if not proposal.cells:  # only after a resume: the row said go on
                say(f"sweep {name}: no round {round_index}: {proposal.reason}")
                return 0
            rounds.create_round(store, name, round_index, proposal.cells)
            added = rounds.added_cells(store, name)
            cells = all_cells(store, name, spec_cells)
            for cell in added[round_index]:
                store.put_cell(cell)
            store.put_sweep(name, store.spec_text(name), [cell.cell_id for cell in cells])
        code = run_cells(cells)
        if code != 0:
            say(
                f"sweep {name}: round {round_index} did not finish (exit {code}); the autopilot "
                "resumes at this round when the sweep is submitted again"
            )
            return code
        results = store.results(name)
        fit = unified_fit(results, FitOptions(bootstrap=adaptive.bootstrap, seed=adaptive.seed))
        reply = answer(question, fit, rule.look_level)
        stopped = rule.verdict(round_index, reply)
        proposal = None
        if stopped is None:
            left = min(adaptive.round_flops, adaptive.budget_flops - sweep_flops(cells))
            proposal = propose(spec, spec_cells, cells, fit, results, question, left)
            stopped = proposal.reason
        row = _row(name, round_index, reply, spec_cells, added, cells, stopped, adaptive.target)
        rounds.write_row(store, row)
        say(describe(row, adaptive.target))
        if stopped:
            return 0
        round_index += 1


def _row(
    sweep: str,
    round_index: int,
    reply: Answer,
    spec_cells: list[CellConfig],
    added: dict[int, list[CellConfig]],
    cells: list[CellConfig],
    stopped: str | None,
    target: float | None,
) -> dict:
    cells_added = len(spec_cells) if round_index == 0 else len(added[round_index])
    return {
        "sweep": sweep,
        "round": round_index,
        "question": reply.question,
        "cells_added": cells_added,
        "cells": len(cells),
        "flops": sweep_flops(cells),
        "estimate": reply.estimate,
        "low": reply.low,
        "high": reply.high,
        "half_width": reply.half_width,
        "level": reply.level,
        "decided": reply.decided(target),
        "at_bound": reply.at_bound,
        "stopped": stopped or "",
    }


def check(spec: SweepSpec, cells: list[CellConfig], source: str) -> None:
    """What the spec model cannot check alone: the budget against round 0's cost."""
    if spec.adaptive is not None:
        stop_rule(spec, cells, source)
