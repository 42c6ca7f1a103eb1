"""Every shipped sweep validates, and each holds the grid its name promises."""

from pathlib import Path

import pytest

from orchestrator.cells import expand
from orchestrator.spec import load_spec

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))


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


@pytest.mark.parametrize("name", ["paper-quant", "paper-sparse", "paper-composition"])
def test_paper_sweeps_cover_the_paper_sizes_on_gpus(name):
    spec = load_spec(f"sweeps/{name}.yaml")
    sizes = {cell.params for cell in expand(spec)}
    assert min(sizes) > 25e6 and max(sizes) > 190e6
    assert spec.resources.gpus >= 1 and spec.world_size > 1
    assert spec.data.source != "bundled"
