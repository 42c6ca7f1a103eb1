"""The cell config contract: ids are content hashes of what changes a result."""

import pytest

from workers.config import PRESETS, CellConfig, ModelConfig, TrainConfig, preset


def cell(**overrides) -> CellConfig:
    fields = {"model": preset("tiny"), "format": "int4", "tokens": 100_000} | overrides
    return CellConfig(**fields)


def test_same_config_gives_same_id_and_label_is_readable():
    assert cell().cell_id == cell().cell_id
    assert cell().cell_id.startswith("tiny-int4-s0-")


def test_any_changed_hyper_parameter_gives_a_new_id():
    base = cell().cell_id
    assert cell(seed=1).cell_id != base
    assert cell(tokens=100_001).cell_id != base
    assert cell(train=TrainConfig(lr=1e-3)).cell_id != base
    assert cell(model=preset("100k")).cell_id != base


def test_execution_details_do_not_change_the_id():
    base = cell().cell_id
    assert cell(world_size=2).cell_id == base
    assert cell(train=TrainConfig(checkpoint_every=7, eval_every=3)).cell_id == base


def test_presets_span_tiny_cpu_to_paper_sizes():
    assert 40_000 < PRESETS["tiny"].non_embedding_params < 60_000
    for name, size in [("30m", 30e6), ("50m", 50e6), ("100m", 100e6), ("200m", 200e6)]:
        assert abs(PRESETS[name].non_embedding_params / size - 1) < 0.05


def test_bad_shapes_and_presets_fail_with_the_reason():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_layers=1, n_heads=4)
    with pytest.raises(ValueError, match="known presets"):
        preset("huge")
    with pytest.raises(ValueError, match="extra"):
        cell(tokenz=3)
