"""The cells a law is fitted to, validated and moved to log space: N non-embedding parameters,
D training tokens, validation loss in nats per token, and each cell's format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DENSE = "dense"


@dataclass(frozen=True)
class Observations:
    """Cells to fit, in log space; `format_index` points into `formats`. `pair_index` (paired
    fits): the cell's (N, D, seed) group, whose formats share that seed's weights and batches."""

    log_params: np.ndarray
    log_tokens: np.ndarray
    log_loss: np.ndarray
    format_index: np.ndarray
    formats: tuple[str, ...]
    pair_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.log_loss)

    def take(self, rows: np.ndarray) -> Observations:
        return Observations(
            self.log_params[rows],
            self.log_tokens[rows],
            self.log_loss[rows],
            self.format_index[rows],
            self.formats,
            None if self.pair_index is None else self.pair_index[rows],
        )


def _positive_finite(name: str, values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(array) | (array <= 0))
    if bad.size:
        rows = ", ".join(str(i) for i in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise ValueError(
            f"{name}: {bad.size} value(s) are NaN, infinite or non-positive (rows {rows})"
        )
    return array


def observations(
    params: Sequence[float],
    tokens: Sequence[float],
    loss: Sequence[float],
    formats: Sequence[str] | None = None,
) -> Observations:
    """Validate cells (all positive and finite, at least two model sizes) and move to log space."""
    params_array = _positive_finite("params", params)
    tokens_array = _positive_finite("tokens", tokens)
    loss_array = _positive_finite("loss", loss)
    if not len(params_array) == len(tokens_array) == len(loss_array):
        raise ValueError("params, tokens and loss must have the same length")
    if len(np.unique(params_array)) < 2:
        raise ValueError(
            f"params: only one distinct model size (N={params_array[0]:.4g}); need >= 2"
        )
    if len(np.unique(tokens_array)) < 2:
        raise ValueError(
            f"tokens: only one distinct token count (D={tokens_array[0]:.4g}); need >= 2"
        )
    if formats is None:
        formats = [DENSE] * len(loss_array)
    format_names = [str(name) for name in formats]
    if len(format_names) != len(loss_array):
        raise ValueError("format must have one entry per cell")
    names = tuple(sorted(set(format_names), key=lambda name: (name != DENSE, name)))
    index = {name: i for i, name in enumerate(names)}
    return Observations(
        np.log(params_array),
        np.log(tokens_array),
        np.log(loss_array),
        np.array([index[name] for name in format_names], dtype=np.int64),
        names,
    )
