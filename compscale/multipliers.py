"""Which multiplier of the quantized-training law a format's parts scale: parts compressed in the
forward pass (weights, activations) cost parameter efficiency and scale N (effN, the unified
law's rho); parts compressed in the backward pass (`g:`, gradients) cost data efficiency and
scale D (effD), as Quartet (arXiv 2505.14669) fits them.

The format grammar is the one source of truth (`Format.has_forward`, `Format.has_backward`). A
format the grammar does not parse (an external table's name) defaults to forward only; a table
says otherwise with its `on_n` / `on_d` columns (`compscale.table.multiplier_columns`).
"""

from __future__ import annotations

DEFAULT = (True, False)  # (on_n, on_d) of a format nothing says more about


def multipliers(name: str) -> tuple[bool, bool]:
    """(on_n, on_d): whether format `name` has a forward compressed part (scales N) and a
    backward one (scales D); a lossless format has neither, a name the grammar does not know is
    DEFAULT."""
    from compscale.formats import parse

    try:
        fmt = parse(name)
    except ValueError:
        return DEFAULT
    return fmt.has_forward, fmt.has_backward
