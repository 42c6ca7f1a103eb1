"""The model: exact N, causal attention, and the compressed-linear seam (masks in state dicts)."""

import pytest
import torch

from compscale.formats import parse
from workers.compressed_linear import CompressedLinear, linear_factory, mask_update, sparsity_at
from workers.config import PRESETS, CellConfig, ModelConfig
from workers.model import Transformer


@pytest.mark.parametrize("name", list(PRESETS))
def test_non_embedding_parameters_equal_the_cell_params_exactly(name):
    cell = CellConfig(model=PRESETS[name], format="dense", tokens=10**9)
    with torch.device("meta"):
        model = Transformer(cell.model, linear_factory(parse("int4")))
    counted = sum(p.numel() for p in model.non_embedding_parameters())
    assert counted == cell.params
    embedding_and_head = 2 * cell.model.vocab_size * cell.model.d_model
    assert sum(p.numel() for p in model.parameters()) == counted + embedding_and_head


def test_logits_at_a_position_do_not_depend_on_later_tokens():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=32, n_layers=2, n_heads=2, seq_len=16))
    tokens = torch.randint(0, 256, (1, 16))
    changed = tokens.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 256
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_sparse_layers_keep_their_mask_in_the_state_dict_and_dense_ones_have_none():
    sparse = CompressedLinear(64, 32, parse("sp50"))
    dense = CompressedLinear(64, 32, parse("int4"))
    assert "mask" in sparse.state_dict()
    assert "mask" not in dense.state_dict()
    sparse.update_mask(0.5)
    assert sparse.mask.float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.count_nonzero(sparse(torch.eye(64)).T) <= 0.51 * sparse.weight.numel()


def test_sparsity_ramps_cubically_to_the_target_then_stays():
    assert sparsity_at(0, 100, 0.9, 0.5) == 0.0
    assert 0.9 * 0.8 < sparsity_at(25, 100, 0.9, 0.5) < 0.9  # cubic: most of the way at half ramp
    assert sparsity_at(50, 100, 0.9, 0.5) == sparsity_at(99, 100, 0.9, 0.5) == 0.9
    assert sparsity_at(0, 100, 0.9, 0.0) == 0.9


def test_masks_are_recomputed_during_the_ramp_only():
    updates = [
        step for step in range(100) if mask_update(step, 100, 0.5, 0.5, updates=5) is not None
    ]
    assert updates == [0, 10, 20, 30, 40, 50]
    assert mask_update(50, 100, 0.5, 0.5) == 0.5
    assert mask_update(3, 100, 0.0, 0.5) is None
