"""Cosine cells vs one WSD ladder at equal budgets: final loss per budget, tokens and time.

    PYTHONPATH=. python benchmarks/wsd_ladder.py [--steps 300 600 1200] [--format dense]

Trains each budget as its own cosine cell, then the same budgets as a WSD ladder (one trunk, one
cooldown per budget), in a temporary store, on one thread; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from workers import run_cell
from workers.config import CellConfig, TrainConfig, preset
from workers.ladder import ladder_savings, with_horizon
from workers.train import run_ladder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--format", default="dense")
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 600, 1200])
    parser.add_argument("--lr", type=float, default=7e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = preset(args.model).model_copy(update={"seq_len": 64})
    base = TrainConfig(batch_size=8, lr=args.lr, eval_tokens=32768)
    budgets = [steps * base.batch_size * model.seq_len for steps in args.steps]

    def cells(train: TrainConfig) -> list[CellConfig]:
        return [CellConfig(model=model, format=args.format, tokens=t, train=train) for t in budgets]

    cosine = cells(base)
    wsd = with_horizon(cells(base.model_copy(update={"schedule": "wsd"})))
    with tempfile.TemporaryDirectory() as store:
        started = time.perf_counter()
        cosine_losses = [run_cell(cell, store)["val_loss"] for cell in cosine]
        cosine_seconds = time.perf_counter() - started
        started = time.perf_counter()
        wsd_losses = [row["val_loss"] for row in run_ladder(wsd, store)]
        wsd_seconds = time.perf_counter() - started

    alone, laddered = ladder_savings(wsd)
    print(f"{args.model} (seq_len 64, batch 8, lr {args.lr}), format {args.format}\n")
    print("| steps | tokens | cosine val loss | WSD ladder val loss | WSD - cosine |")
    print("|---:|---:|---:|---:|---:|")
    for steps, tokens, c, w in zip(args.steps, budgets, cosine_losses, wsd_losses, strict=True):
        print(f"| {steps} | {tokens} | {c:.4f} | {w:.4f} | {w - c:+.4f} |")
    print(
        f"\ntokens trained: cosine {alone} (each budget from scratch), WSD ladder {laddered} "
        f"({1 - laddered / alone:.0%} less); wall time: cosine {cosine_seconds:.0f} s, "
        f"WSD ladder {wsd_seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
