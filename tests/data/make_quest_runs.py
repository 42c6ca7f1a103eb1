"""Rebuild tests/data/quest_runs.csv from QuEST's public run table.

QuEST (Panferov et al., arXiv 2502.05003; github.com/IST-DASLab/QuEST, MIT licence) fits its
scaling law over bits in `notebooks/plots.ipynb` to the 104 C4 runs in
`for_plots/runs_for_scaling.json`. This script keeps, per run, the columns that notebook fits
with (loss = W&B `final-val/loss` in nats, non_embedding_parameters = N, tokens = D) and the
notebook's precision label `P` (its cell 2 groups runs into 17 labels, one efficiency each,
16 = bf16 fixed at 1), and adds `format`, a readable name of that label for `compscale fit`.
Rows stay in the JSON's order; numbers are written with `repr`, so they round-trip exactly.

    git -C QuEST show c295afda142c03a89d2af04653881beccf459aa1:for_plots/runs_for_scaling.json \
        > runs_for_scaling.json
    python tests/data/make_quest_runs.py runs_for_scaling.json tests/data/quest_runs.csv
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter

COLUMNS = (
    "model_size",
    "non_embedding_parameters",
    "tokens",
    "w_quant",
    "a_quant",
    "w_bits",
    "a_bits",
    "P",
    "format",
    "loss",
)


def precision_label(run: dict) -> str:
    """The notebook's `P` for a run (plots.ipynb cell 2), as a string."""
    w_quant, a_quant = run["w_quant"], run["a_quant"]
    if "FourEight" in w_quant:
        return "2.5"
    if "FP4" in w_quant:
        return "fp4"
    if w_quant == a_quant == "NoQuantizer":
        return "16"
    if w_quant == a_quant and "Hadamard" in w_quant:
        return str(run["w_bits"])
    if w_quant == a_quant:
        return f"{run['w_bits']}NOH"
    if "Hadamard" in w_quant and a_quant == "NoQuantizer":
        return f"{run['w_bits']}WO"
    raise ValueError(f"run matches none of the notebook's groups: {w_quant} / {a_quant}")


def format_name(label: str) -> str:
    """A readable format for the notebook's label: Hadamard-rotated (QuEST) or not, weight-only."""
    if label == "16":
        return "dense"
    if label == "2.5":
        return "2:4-w4a4-had"
    if label == "fp4":
        return "fp4-had"
    if label.endswith("NOH"):
        bits = label.removesuffix("NOH")
        return f"w{bits}a{bits}"
    if label.endswith("WO"):
        return f"w{label.removesuffix('WO')}-had"
    return f"w{label}a{label}-had"


# Run counts per group that plots.ipynb asserts (base QuEST, 2:4, FP4, no Hadamard, weight-only,
# bf16).
NOTEBOOK_COUNTS = {"had": 48, "2.5": 6, "fp4": 4, "NOH": 24, "WO": 16, "16": 6}


def group(label: str) -> str:
    for suffix in ("NOH", "WO"):
        if label.endswith(suffix):
            return suffix
    return label if label in ("2.5", "fp4", "16") else "had"


def main(source: str, target: str) -> None:
    with open(source) as file:
        runs = json.load(file)
    rows = []
    for run in runs:
        label = precision_label(run)
        rows.append(
            {
                **{k: run[k] for k in COLUMNS[:7]},
                "P": label,
                "format": format_name(label),
                "loss": run["loss"],
            }
        )
    counts = Counter(group(row["P"]) for row in rows)
    if counts != NOTEBOOK_COUNTS:
        raise ValueError(
            f"group counts {dict(counts)} differ from the notebook's {NOTEBOOK_COUNTS}"
        )
    with open(target, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row.values()])


if __name__ == "__main__":
    main(*sys.argv[1:3])
