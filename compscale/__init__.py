"""compscale: the science library: representations, GMSE, scaling-law and capacity fits.

`from compscale import open_store` is the notebook API (`orchestrator.api`): re-exported lazily,
the one sanctioned import against the layers (docs/design.md, "Layers"), so that importing
compscale itself never loads the orchestrator.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "open_store":
        from orchestrator.api import open_store

        return open_store
    raise AttributeError(f"module 'compscale' has no attribute {name!r}")
