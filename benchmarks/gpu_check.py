"""The two Python halves of `benchmarks/gpu_check.sh`: the cut of sweeps/gpu-mini.yaml it submits,
and the Markdown summary it writes for docs/results/gpu-mini.md.

The cut keeps what the GPU must prove (the real driver on the embedded Ray, WSD ladders, 8 cells
packed on one GPU by `resources.gpus: 0.125`, bf16, every gpu-mini format) and drops what only
costs time (the largest size, the largest budget, two of three seeds): 2 sizes x 2 budgets x 10
formats = 40 cells in 20 ladders. `--cpu` gives the rehearsal's cut: the tiny preset, 3 formats,
fp32, no GPU, so the same steps run on a CPU in a minute.

    python benchmarks/gpu_check.py cut [--cpu] OUT.yaml
    python benchmarks/gpu_check.py summary WORK_DIR STORE OUT.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from orchestrator.store import Store

ROOT = Path(__file__).resolve().parents[1]
GPU_MINI = ROOT / "sweeps" / "gpu-mini.yaml"
CUT_NAME = "gpu-mini-cut"
# The target for the 100m preset in bf16 on an H100/H200 (dense bf16 peak 989 TFLOP/s).
MFU_TARGET_PERCENT = 50


def cut_spec(cpu: bool) -> dict:
    """gpu-mini cut to a one-call GPU check (or, with `cpu`, to its CPU rehearsal)."""
    spec = yaml.safe_load(GPU_MINI.read_text())
    spec["name"] = CUT_NAME
    if cpu:
        spec["models"] = [{"preset": "tiny", "train": {"lr": 3.0e-3}}]
        spec["tokens"] = [65536, 131072]
        spec["formats"] = ["dense", "int4", "w:int4,a:int4"]
        spec["train"] |= {"batch_size": 8, "eval_tokens": 16384, "precision": "fp32"}
        spec["resources"] = {"cpus": 1, "gpus": 0}
    else:
        spec["models"] = spec["models"][:2]
        spec["tokens"] = [1000000, 2000000]
    spec["seeds"] = spec["seeds"][:1]
    return spec


def write_cut(path: Path, cpu: bool) -> None:
    header = (
        f"# {CUT_NAME}: sweeps/gpu-mini.yaml cut by benchmarks/gpu_check.py"
        f"{' --cpu (the CPU rehearsal)' if cpu else ''}; see its docstring.\n"
    )
    path.write_text(header + yaml.safe_dump(cut_spec(cpu), sort_keys=False))


def step_rows(work: Path) -> list[list[str]]:
    """(step, exit status, seconds) rows that gpu_check.sh appended to steps.tsv."""
    path = work / "steps.tsv"
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def step_log(work: Path, step: str, last: int = 30) -> str:
    path = work / f"{step}.txt"
    if not path.exists():
        return "(not run)"
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-last:]) or "(no output)"


def torchrun_log(work: Path) -> str:
    """The torchrun cell's result line, after the NCCL lines that show the backend really ran
    (its version, the transport it chose, the communicator coming up); gloo prints none."""
    path = work / "train_cell.txt"
    if not path.exists():
        return "(not run)"
    lines = path.read_text(errors="replace").splitlines()
    marks = ("NCCL version", "Using network", "Init COMPLETE")
    nccl = [line for line in lines if "NCCL INFO" in line and any(m in line for m in marks)]
    result = [line for line in lines if line.startswith("{")][-1:] or lines[-1:]
    return "\n".join(nccl[:4] + (result or ["(no output)"]))


def sweep_tables(store: Path, cells_csv: Path) -> str:
    """Cells finished of the cut and its final validation loss per (model, format, tokens)."""
    if not (store / "sweeps").exists():
        return "(no store: the sweep did not start)"
    handle = Store(str(store))
    manifest = handle.manifest(CUT_NAME)
    states: dict[str, int] = {}
    for cell_id in manifest:
        state = handle.status(cell_id).state
        states[state] = states.get(state, 0) + 1
    results = handle.results(CUT_NAME)
    results.to_csv(cells_csv, index=False)
    lines = [
        f"{states.get('done', 0)} of {len(manifest)} cells done; states: "
        + ", ".join(f"{state} {count}" for state, count in sorted(states.items()))
    ]
    if len(results):
        hardware = ", ".join(sorted(results["hardware"].astype(str).unique()))
        lines.append(f"hardware (from the result rows): {hardware}")
        table = results.pivot_table(
            index="format", columns=["model", "tokens"], values="val_loss", aggfunc="mean"
        )
        lines += ["", "val_loss by format (rows) and (model, tokens) (columns):", ""]
        lines.append(table.round(4).to_markdown())
        speed = results.groupby("format")["tokens_per_s"].median().sort_values()
        lines += ["", "median tokens/s per cell (cells share the device by `resources`):", ""]
        lines.append(speed.round(0).to_frame().to_markdown())
    return "\n".join(lines)


def summary(work: Path, store: Path, out: Path) -> None:
    """docs/results/gpu-mini.md as measured: each step's exit status and time, the cut's cells,
    the torchrun cell, fake-quant step times over dense and the MFU line, with the commands."""
    rows = step_rows(work)
    cut_yaml = out.parent / f"{CUT_NAME}.yaml"
    device = (work / "device.txt").read_text().strip() if (work / "device.txt").exists() else "?"
    parts = [
        "# GPU check: gpu-mini cut on Ray, torchrun on NCCL, MFU, fake-quant overhead",
        "",
        f"Measured by `benchmarks/gpu_check.sh` on: {device}",
        "",
        "| step | exit status | seconds |",
        "|:-----|------------:|--------:|",
        *(f"| {step} | {rc} | {seconds} |" for step, rc, seconds in rows),
        "",
        "## The gpu-mini cut through `compscale submit` on the embedded local Ray",
        "",
        f"`{CUT_NAME}.yaml` (at the end; `python benchmarks/gpu_check.py cut`): "
        "`compscale submit`, its cells packed by the cut's `resources`, WSD ladders.",
        "",
        sweep_tables(store, out.parent / "cells.csv"),
        "",
        "```",
        step_log(work, "sweep", 12),
        "```",
        "",
        "## One cell under torchrun (world size 1, NCCL when CUDA is visible)",
        "",
        "```",
        torchrun_log(work),
        "```",
        "",
        "## Throughput: run_cell vs bare loop, fake-quant step time over dense, MFU",
        "",
        f"MFU target: >= {MFU_TARGET_PERCENT}% of the 989 TFLOP/s dense bf16 peak.",
        "",
        "```",
        step_log(work, "throughput", 30),
        "```",
        "",
        "## Formats on CUDA (pytest -m gpu)",
        "",
        "```",
        step_log(work, "formats_gpu", 6),
        "```",
        "",
        f"## {CUT_NAME}.yaml",
        "",
        "```yaml",
        cut_yaml.read_text().rstrip() if cut_yaml.exists() else "(not written)",
        "```",
        "",
    ]
    out.write_text("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cut = commands.add_parser("cut", help="write the cut of gpu-mini as a sweep YAML")
    cut.add_argument("out", type=Path)
    cut.add_argument("--cpu", action="store_true", help="the CPU rehearsal's cut")
    summarize = commands.add_parser("summary", help="write the Markdown summary")
    summarize.add_argument("work", type=Path, help="gpu_check.sh's work folder (step logs)")
    summarize.add_argument("store", type=Path)
    summarize.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "cut":
        write_cut(args.out, args.cpu)
    else:
        summary(args.work, args.store, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
