"""Ladder planning is a leaf: the driver and `compscale plan` use it without torch, and the
training loop imports it, never the other way round (not even inside a function)."""

import ast
from pathlib import Path

import workers.ladder

TRAINING = {"torch", "workers.train", "workers.checkpoint", "workers.segment"}


def test_ladder_planning_imports_nothing_of_training_anywhere_in_the_module():
    tree = ast.parse(Path(workers.ladder.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    assert not imported & TRAINING
    assert not any(name.startswith("torch.") for name in imported)
