"""Expansion of a spec into cells: the grid, relative budgets, per-size settings, stable ids."""

from orchestrator.cells import expand
from orchestrator.spec import parse_spec
from workers.config import preset

SPEC = """
name: {name}
models: [tiny, {{preset: 100k, train: {{lr: 2.0e-3}}}}]
tokens: [10000]
tokens_per_param: [2.5]
formats: [dense, int4]
seeds: [0, 1]
extra_cells:
  - {{model: {{d_model: 64, n_layers: 2, n_heads: 4}}, format: sp50, tokens_per_param: 1}}
"""


def cells(name: str = "a"):
    return expand(parse_spec(SPEC.format(name=name)))


def test_the_grid_is_models_by_budgets_by_formats_by_seeds_then_extra_cells():
    expanded = cells()
    assert len(expanded) == 2 * 2 * 2 * 2 + 1
    assert len({cell.cell_id for cell in expanded}) == len(expanded)
    assert [c.format for c in expanded[:4]] == ["dense", "dense", "int4", "int4"]
    assert [c.seed for c in expanded[:4]] == [0, 1, 0, 1]
    assert expanded[-1].format == "sp50"


def test_relative_budgets_are_tokens_per_non_embedding_parameter_rounded():
    expanded = cells()
    tiny_params = preset("tiny").non_embedding_params
    assert {c.tokens for c in expanded if c.model == preset("tiny")} == {
        10000,
        round(2.5 * tiny_params),
    }
    assert expanded[-1].tokens == expanded[-1].params  # tokens_per_param: 1


def test_per_size_training_overrides_reach_only_that_size():
    expanded = cells()
    assert {c.train.lr for c in expanded if c.model == preset("100k")} == {2.0e-3}
    assert {c.train.lr for c in expanded if c.model == preset("tiny")} == {3e-3}


def test_the_same_cell_in_two_sweeps_has_the_same_id():
    assert [c.cell_id for c in cells("a")] == [c.cell_id for c in cells("b")]


def test_flops_are_six_n_d():
    cell = cells()[0]
    assert cell.flops == 6 * cell.params * cell.tokens
