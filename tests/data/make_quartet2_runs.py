"""Rebuild tests/data/quartet2_runs.csv from Quartet II's public run table.

Quartet II (Panferov et al., arXiv 2601.22813; github.com/IST-DASLab/Quartet-II) plots its NVFP4
training runs from `for_plots/runs.json`: C4 runs of 30M-200M parameters, grouped by what is
quantized. This script keeps five groups, one row per run, in the JSON's order:
- `baseline`: bf16 training (`format` dense);
- `forward_main`: NVFP4 weights and activations in the forward pass, bf16 backward (on_n);
- `backward_main`: bf16 forward, the backward pass's GEMMs quantized to NVFP4 with stochastic
  rounding (`sr`) or EDEN (`eden`) (on_d);
- `quartetv2`, `nvidia`, `tetrajetv2`: whole NVFP4 training recipes, forward and backward
  (on_n and on_d).
Columns: `group`, `N` (parameters, as the notebook fits), `D` (tokens), `final_loss` (nats),
the configuration fields that tell formats apart, and the added `format` (a readable name of
those fields), `on_n` and `on_d`. Floats are written with `repr`, so they round-trip exactly.

    git -C Quartet-II show e2eda479ffb6d04b00426b32030418696e3f0637:for_plots/runs.json \
        > runs.json
    python tests/data/make_quartet2_runs.py runs.json tests/data/quartet2_runs.csv
"""

from __future__ import annotations

import csv
import json
import sys

GROUPS = ("baseline", "forward_main", "backward_main", "quartetv2", "nvidia", "tetrajetv2")
FIELDS = (
    "fsquare",
    "fscale_override",
    "fhadamard_dim",
    "ffour_over_six",
    "bbackward_scheme",
    "bunbiased",
    "bscale_override",
    "sscheme",
    "shadamard_dim",
    "sdelayed_amax",
)
COLUMNS = ("group", "N", "D", "final_loss", *FIELDS, "format", "on_n", "on_d")
# The backward pass's two GEMM pairs: Q(E)Q(Wt)t quantizes the input gradient's, Q(Et)Q(Xt)t the
# weight gradient's; EW / EtX leave that one in bf16.
BACKWARD_GEMMS = {
    "Q(E)Q(Wt)t_EtX": "dgrad",
    "EW_Q(Et)Q(Xt)t": "wgrad",
    "Q(E)Q(Wt)t_Q(Et)Q(Xt)t": "dgrad+wgrad",
}


def format_of(group: str, run: dict) -> tuple[str, bool, bool]:
    """(format name, on_n, on_d) of a run of `group`."""
    if group == "baseline":
        return "dense", False, False
    if group == "forward_main":
        name = f"fwd:nvfp4-h{run['fhadamard_dim']}-s{run['fscale_override']}"
        name += "-square" * bool(run["fsquare"]) + "-4over6" * bool(run["ffour_over_six"])
        return name, True, False
    if group == "backward_main":
        gemms = BACKWARD_GEMMS[run["bbackward_scheme"]]
        name = f"bwd:nvfp4-{gemms}-{run['bunbiased']}-s{run['bscale_override']}"
        return name, False, True
    name = f"fwd+bwd:{run['sscheme']}-h{run['shadamard_dim']}"
    return name + "-delayed" * bool(run["sdelayed_amax"]), True, True


def main(source: str, target: str) -> None:
    with open(source) as handle:
        runs = json.load(handle)
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for group in GROUPS:
            for run in runs[group]:
                name, on_n, on_d = format_of(group, run)
                values = [run["N"], run["D"], run["final_loss"], *(run[f] for f in FIELDS)]
                writer.writerow([group, *map(text, values), name, on_n, on_d])


def text(value: object) -> str:
    """A float by `repr` (it round-trips exactly), anything else as `str` (None stays None)."""
    return repr(value) if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main(*sys.argv[1:])
