"""Worker throughput, measured in one run on one device:

1. tokens/s of `workers.run_cell` over a bare PyTorch loop of the same model and batch
   (target >= 0.95);
2. each format's step time over dense, both through `run_cell` (fake-quant overhead; target <= 1.3x
   on CPU);
3. on CUDA: model FLOPs utilisation of the 100m preset in bf16 with torch.compile (target >= 50%).

Steady-state rates skip the first `--warmup` steps (compilation, allocator warm-up). run_cell's rate
comes from its own loss rows (`wall_time_s` of the last row, taken after the final evaluation syncs
the device, minus that of the warm-up row), so it includes everything the loop does per step.

    python benchmarks/worker_throughput.py --device cpu --steps 100
    python benchmarks/worker_throughput.py --device cuda --steps 60   # adds the MFU line
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from compscale.formats import STANDARD_FORMATS
from workers.config import CellConfig, ModelConfig, TrainConfig, preset
from workers.model import Transformer
from workers.sink import read_losses
from workers.train import run_cell

DEFAULT_FORMATS = [
    "dense",
    "int4",
    "int2",
    "int4-had",
    "fp4",
    "sp50",
    "2:4",
    "sp50+int4",
    "vq2d4",
    "noise0.01",
    "w:int4,a:int4",
]
# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment.
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def bare_loop_tokens_per_s(
    model_config: ModelConfig, batch: int, steps: int, warmup: int, device: torch.device
) -> float:
    """A minimal loop: fixed random batch, dense model, AdamW, clipping; synchronised timing."""
    torch.manual_seed(0)
    model = Transformer(model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    tokens = torch.randint(0, 256, (batch, model_config.seq_len + 1), device=device)
    for step in range(steps):
        if step == warmup:
            _synchronize(device)
            started = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
    _synchronize(device)
    return (steps - warmup) * batch * model_config.seq_len / (time.perf_counter() - started)


def run_cell_tokens_per_s(cell: CellConfig, warmup: int) -> float:
    """Steady-state tokens/s of run_cell, from the wall times in its loss rows."""
    with tempfile.TemporaryDirectory() as store:
        run_cell(cell, store)
        losses = read_losses(store, cell.cell_id).to_pydict()
    tokens, wall = losses["tokens"], losses["wall_time_s"]
    return (tokens[-1] - tokens[warmup]) / (wall[-1] - wall[warmup])


def bench_cell(model_config: ModelConfig, fmt: str, batch: int, steps: int, **train) -> CellConfig:
    train = {"batch_size": batch, "eval_tokens": model_config.seq_len} | train
    tokens = steps * batch * model_config.seq_len
    return CellConfig(model=model_config, format=fmt, tokens=tokens, train=TrainConfig(**train))


def flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token: 6 x (N + head) for the matmuls, plus attention scores and values
    counted over the full (non-causal) square as in PaLM's MFU (12 x layers x d x seq_len)."""
    matmul_params = config.non_embedding_params + config.d_model * config.vocab_size
    return 6 * matmul_params + 12 * config.n_layers * config.d_model * config.seq_len


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of each rate")
    parser.add_argument("--model", default="tiny", help="preset for the overhead comparisons")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--formats", nargs="+", default=DEFAULT_FORMATS, help="or 'all'")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    parser.add_argument("--mfu-model", default="100m")
    parser.add_argument("--mfu-batch", type=int, nargs="+", default=[64], help="one MFU line each")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="override the bf16 peak")
    args = parser.parse_args()

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    if not cuda and torch.cuda.is_available():
        raise SystemExit("--device cpu on a CUDA machine: run_cell always uses the GPU here")
    device = torch.device("cuda" if cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    hardware = torch.cuda.get_device_name(device) if cuda else f"cpu x{torch.get_num_threads()}"
    model_config = preset(args.model).model_copy(update={"seq_len": args.seq_len})
    print(
        f"device: {hardware}; model {args.model} (N={model_config.non_embedding_params:,}), "
        f"batch {args.batch} x {args.seq_len}, {args.steps} steps, warm-up {args.warmup}"
    )

    # The bare loop runs before and after run_cell, so a drifting machine load hits both alike.
    bare_before = bare_loop_tokens_per_s(model_config, args.batch, args.steps, args.warmup, device)
    dense_cell = bench_cell(model_config, "dense", args.batch, args.steps, precision="fp32")
    worker = run_cell_tokens_per_s(dense_cell, args.warmup)
    bare_after = bare_loop_tokens_per_s(model_config, args.batch, args.steps, args.warmup, device)
    bare = (bare_before + bare_after) / 2
    print(
        f"run_cell {worker:,.0f} tok/s vs bare loop {bare:,.0f} tok/s: "
        f"ratio {worker / bare:.3f} (target >= 0.95; bare before/after "
        f"{bare_before:,.0f}/{bare_after:,.0f})"
    )

    formats = list(STANDARD_FORMATS) if args.formats == ["all"] else args.formats
    rates = {}
    for fmt in [f for f in formats if f != "dense"]:
        cell = bench_cell(model_config, fmt, args.batch, args.steps, precision="fp32")
        rates[fmt] = run_cell_tokens_per_s(cell, args.warmup)
    # Dense is measured before and after the formats, for the same reason as the bare loop.
    rates["dense"] = (worker + run_cell_tokens_per_s(dense_cell, args.warmup)) / 2
    print("format        tok/s    step time / dense   (target <= 1.3 on CPU)")
    for fmt in ["dense", *(f for f in formats if f != "dense")]:
        print(f"{fmt:<12} {rates[fmt]:>8,.0f}   {rates['dense'] / rates[fmt]:.2f}x")

    if cuda:
        for batch in args.mfu_batch:
            print(mfu_line(args.mfu_model, batch, args, hardware))


def mfu_line(model: str, batch: int, args: argparse.Namespace, hardware: str) -> str:
    """Model FLOPs utilisation of run_cell on `model` in bf16, compiled, at `batch` sequences."""
    config = preset(model)
    cell = bench_cell(config, "dense", batch, args.steps, precision="bf16", compile=True)
    rate = run_cell_tokens_per_s(cell, args.warmup)
    peak = args.peak_tflops * 1e12 or next(
        (value for key, value in PEAK_BF16.items() if key in hardware), 0.0
    )
    achieved = rate * flops_per_token(config)
    line = f"MFU {model} bf16 compiled, batch {batch}: {rate:,.0f} tok/s, "
    line += f"{achieved / 1e12:.1f} TFLOP/s"
    if not peak:
        return line + " (unknown peak for this device: pass --peak-tflops)"
    return line + f", {100 * achieved / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s (target >= 50%)"


if __name__ == "__main__":
    main()
