"""Width of the rho intervals, plain vs paired unified fit: synthetic cells with a known shared
per-(N, D, seed) noise component (tests/compscale/test_paired.py's), and the committed cpu-mini
store (read only; its compressed formats have one seed, so pairing can only use the dense pairs).

    PYTHONPATH=. python benchmarks/paired_seeds.py [--bootstrap 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from compscale import laws
from orchestrator.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_paired import shared_noise_cells


def widths(cells: pd.DataFrame, bootstrap: int) -> pd.DataFrame:
    columns = (cells["params"], cells["tokens"], cells["val_loss"], cells["format"])
    options = laws.FitOptions(bootstrap=bootstrap)
    plain = laws.fit(*columns, law="unified", options=options)
    paired = laws.fit(*columns, law="unified", options=options, paired_seeds=cells["seed"])
    rows = []
    for name in plain.rho:
        if name == laws.DENSE:
            continue
        key = f"rho[{name}]"
        plain_width = plain.ci[key][1] - plain.ci[key][0]
        paired_width = paired.ci[key][1] - paired.ci[key][0]
        rows.append([name, plain.rho[name], plain_width, paired.rho[name], paired_width])
    table = pd.DataFrame(
        rows, columns=["format", "rho plain", "CI width plain", "rho paired", "CI width paired"]
    )
    return table.assign(ratio=table["CI width paired"] / table["CI width plain"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=100)
    args = parser.parse_args()
    store = Path(__file__).resolve().parents[1] / "docs" / "results" / "stores" / "cpu-mini"
    sources = {"synthetic (shared noise sd 0.02, own 0.002)": shared_noise_cells()}
    sources["cpu-mini store"] = Store(str(store)).results("cpu-mini")
    for title, cells in sources.items():
        print(f"\n{title}: {len(cells)} cells, bootstrap {args.bootstrap}")
        print(widths(cells, args.bootstrap).to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
