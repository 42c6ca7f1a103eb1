"""Every shipped sweep validates, and each holds the grid its name promises."""

from pathlib import Path

import pytest
from helpers import doc_text

from compscale.formats import parse
from compscale.gmse import gmse
from orchestrator.cells import expand
from orchestrator.spec import load_spec
from workers.config import preset

SWEEPS = sorted((Path(__file__).resolve().parents[2] / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_shipped_sweep_validates_and_expands(path):
    spec = load_spec(str(path))
    cells = expand(spec, source=str(path))
    assert spec.name == path.stem
    assert len({cell.cell_id for cell in cells}) == len(cells)


def test_cpu_mini_is_the_paper_in_miniature():
    spec = load_spec("sweeps/cpu-mini.yaml")
    cells = expand(spec, source="sweeps/cpu-mini.yaml")
    required = {"dense", "sp50", "sp75", "int2", "int3", "int4", "sp50+int4", "sp75+int2"}
    assert required <= set(spec.formats)
    assert any(fmt.startswith("noise") for fmt in spec.formats)
    assert len({cell.params for cell in cells}) == 4
    assert len(spec.tokens_per_param) == 2
    assert len({cell.seed for cell in cells if cell.format == "dense"}) >= 2


def test_cpu_miniatures_hold_the_rbbm_comparison_and_the_weights_x_activations_grid():
    rbbm = load_spec("sweeps/cpu-rbbm.yaml")
    assert {"dense", "sp50", "sp50-rbbm0", "sp50-rbbm0.1"} <= set(rbbm.formats)
    assert {cell.seed for cell in expand(rbbm) if cell.format == "sp50-rbbm0.1"} == {0, 1}
    wxa = set(load_spec("sweeps/cpu-wxa.yaml").formats)
    for bits in (2, 4):
        assert {f"int{bits}", f"w:dense,a:int{bits}", f"w:int{bits},a:int{bits}"} <= wxa


PAPER = sorted(path.stem for path in SWEEPS if path.stem.startswith("paper-"))
PAPER_LR = {"30m": 1.2e-3, "50m": 1.2e-3, "100m": 6e-4, "200m": 3e-4}


def formats_of(name: str) -> set[str]:
    return set(load_spec(f"sweeps/{name}.yaml").formats)


@pytest.mark.parametrize("name", PAPER)
def test_paper_sweeps_use_the_paper_shapes_on_gpus(name):
    spec = load_spec(f"sweeps/{name}.yaml")
    cells = expand(spec)
    for entry in spec.models:
        model, preset_model = entry.resolve(), preset(entry.preset)
        assert model.model_copy(update={"seq_len": 1024, "vocab_size": 256}) == preset_model
        assert model.seq_len == 512 and entry.train.lr == PAPER_LR[entry.preset]
    assert sorted(spec.tokens_per_param) == [50, 100, 200]
    assert spec.train.warmup_fraction == 0.1 and spec.train.weight_decay > 0
    assert {cell.params for cell in cells} == {preset(p).non_embedding_params for p in PAPER_LR}
    assert spec.resources.gpus >= 1 and spec.data.source != "bundled"
    assert "dense" in spec.formats


def test_paper_sparse_compares_the_backward_masks_at_10_to_90_percent():
    formats = formats_of("paper-sparse")
    for level in (10, 25, 50, 75, 90):
        assert {
            f"sp{level}",
            f"sp{level}-rbbm0",
            f"sp{level}-rms0.1",
            f"sp{level}-rbbm0.1",
        } <= formats


def test_paper_quant_has_weights_activations_and_both_with_a_noise_ladder():
    formats = formats_of("paper-quant")
    for bits in (1, 2, 3, 4, 8):
        assert {f"int{bits}", f"w:dense,a:int{bits}", f"w:int{bits},a:int{bits}"} <= formats
        noise = float(f"{gmse(f'int{bits}'):.3g}")
        assert str(parse(f"noise{noise}")) in formats


def test_paper_composition_is_bits_by_sparsity():
    formats = formats_of("paper-composition")
    for bits in (2, 3, 4, 8):
        assert f"int{bits}" in formats
        assert {f"sp{level}+int{bits}" for level in (25, 50, 75)} <= formats


def test_paper_scales_crosses_group_sizes_with_clipping():
    formats = formats_of("paper-scales")
    for bits in (2, 3, 4):
        for group in ("", "-g128", "-g32"):
            assert {f"int{bits}{group}", f"int{bits}-absmax{group}"} <= formats


def test_the_documented_cost_table_matches_the_sweeps():
    """Cells, 6ND FLOPs and GPU-hours at docs/paper-sweeps.md's MFU assumption, per paper sweep."""
    page = doc_text("paper-sweeps.md")
    for name in PAPER:
        cells = expand(load_spec(f"sweeps/{name}.yaml"))
        flops = sum(cell.flops for cell in cells)
        hours = flops / (0.458 * 989e12) / 3600
        row = f"| `{name}` | {len(cells)} | {flops:.3g} | {hours:,.0f} |"
        assert row in page, row
