"""The bootstrap over cells: resamples within each format (or whole seed groups in a paired fit),
each polished warm from the best fit and from the runner-up local minimum, optionally in a pool of
spawned processes. The intervals are its percentiles 2.5-97.5."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from compscale.laws.cells import Observations
from compscale.laws.forms import Law, natural
from compscale.laws.problem import Problem

# A second warm start of a bootstrap resample that is not within PROBE_MARGIN of the first one's
# objective after PROBE_EVALUATIONS function evaluations is abandoned: it would not win.
PROBE_EVALUATIONS = 40
PROBE_MARGIN = 0.25


def bootstrap_rows(obs: Observations, rng: np.random.Generator) -> np.ndarray:
    """Cells resampled with replacement within each format (every format keeps its cell count);
    in a paired fit, whole (N, D, seed) groups within each (N, D), so pairs stay pairs."""
    if obs.pair_index is not None:
        _, level = np.unique(
            np.column_stack([obs.log_params, obs.log_tokens]), axis=0, return_inverse=True
        )
        parts = []
        for index in np.unique(level):
            groups = np.unique(obs.pair_index[level.ravel() == index])
            for group in rng.choice(groups, size=len(groups), replace=True):
                parts.append(np.flatnonzero(obs.pair_index == group))
        return np.concatenate(parts)
    parts = []
    for index in range(len(obs.formats)):
        rows = np.flatnonzero(obs.format_index == index)
        parts.append(rng.choice(rows, size=len(rows), replace=True))
    return np.concatenate(parts)


@dataclass(frozen=True)
class Resampler:
    """One bootstrap resample's fit, as a picklable callable for a process pool."""

    law: Law
    obs: Observations
    delta: float
    warm: list[np.ndarray]
    method: str
    with_rho: bool

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Polish from the optimum; polish from each other warm start only as far as it stays
        competitive (within PROBE_MARGIN of the best after PROBE_EVALUATIONS evaluations)."""
        resample = Problem(self.law, self.obs.take(rows), self.delta)
        best, best_value = resample.polish(self.warm[0], self.method)
        for start in self.warm[1:]:
            probe, value = resample.polish(start, self.method, max_nfev=PROBE_EVALUATIONS)
            if value <= best_value * (1 + PROBE_MARGIN):
                theta, value = resample.polish(probe, self.method)
                if value < best_value:
                    best, best_value = theta, value
        return natural(self.law, best, self.obs, self.with_rho)


def map_in_processes(
    task: Callable[[np.ndarray], np.ndarray],
    items: list[np.ndarray],
    jobs: int,
    progress: Callable[[int, int], None] | None,
) -> Iterator[np.ndarray]:
    """task over items in order, in `jobs` spawned processes when more than one (spawned, not
    forked: the caller may hold torch or Ray threads)."""
    if jobs <= 1 or len(items) < 2 * jobs:
        results: Iterable[np.ndarray] = map(task, items)
        pool = None
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(task, items, chunksize=max(1, len(items) // (8 * jobs)))
    try:
        for done, result in enumerate(results, 1):
            if progress is not None:
                progress(done, len(items))
            yield result
    finally:
        if pool is not None:
            pool.shutdown()
