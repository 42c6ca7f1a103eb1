"""Speed of the representation ops, measured against dense in the same run.

Three measurements:
1. op: forward + backward of `fmt.apply` on one size x size weight, and of a linear layer
   (tokens x size input) using it, relative to the dense linear layer;
2. model: one training step (forward, backward, AdamW) of a small `workers.model.Transformer` whose
   block linears carry the format, relative to the dense model (the overhead a CPU sweep pays);
3. the GMSE table of all standard formats (`compscale gmse --standard` in a fresh process), wall.

    .venv/bin/python benchmarks/formats_speed.py                 # 4096 x 4096, all standard formats
    .venv/bin/python benchmarks/formats_speed.py --size 1024 --formats int4 sp50 --repeats 3
    .venv/bin/python benchmarks/formats_speed.py --device cuda --preset 30m --batch 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from compscale.formats import STANDARD_FORMATS, Format, parse

CLOCK = time.perf_counter  # or time.process_time with --cpu-time


def synchronize() -> None:
    """Wait for queued GPU work, so a step's time includes it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def paired_seconds(
    reference: Callable[[], None], candidate: Callable[[], None], repeats: int
) -> tuple[float, float]:
    """Best wall time of each step, timed alternately after one warm-up call of each.

    The minimum and the interleaving keep the ratio honest on a CPU shared with other work: a
    burst of load slows one call, not one side of the comparison.
    """
    reference()
    candidate()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for index, step in enumerate((reference, candidate)):
            start = CLOCK()
            step()
            synchronize()
            best[index] = min(best[index], CLOCK() - start)
    return best[0], best[1]


def op_step(fmt: Format, weight: torch.Tensor, inputs: torch.Tensor | None) -> Callable[[], None]:
    """As in training: the mask is computed once (a ramp recomputes it now and then)."""
    mask = fmt.compute_mask(weight)

    def step() -> None:
        weight.grad = None
        compressed = fmt.apply(weight, mask)
        out = compressed if inputs is None else fmt.apply_activation(inputs) @ compressed.T
        out.sum().backward()

    return step


def model_step(fmt: Format, preset: str, batch: int, device: str) -> Callable[[], None]:
    from workers.compressed_linear import linear_factory
    from workers.config import PRESETS
    from workers.model import Transformer

    config = PRESETS[preset]
    torch.manual_seed(0)
    model = Transformer(config, linear_factory(fmt)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, config.vocab_size, (batch, config.seq_len + 1), device=device)

    def step() -> None:
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="weight is size x size")
    parser.add_argument("--tokens", type=int, default=256, help="input rows of the linear layer")
    parser.add_argument("--formats", nargs="*", default=list(STANDARD_FORMATS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="200k", help="model preset for the training-step test")
    parser.add_argument("--batch", type=int, default=16, help="sequences per model step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-gmse", action="store_true")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time CPU seconds of this process, not wall time (steadier on a shared machine)",
    )
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    formats = [parse(text) for text in args.formats]
    dense = parse("dense")

    clock = "CPU time" if args.cpu_time else "wall time"
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {clock}")
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(args.size, args.size, generator=generator).to(args.device)
    weight.requires_grad_()
    inputs = torch.randn(args.tokens, args.size, generator=generator).to(args.device)
    print(f"\n[op] {args.size}^2 weight, linear layer on {args.tokens} tokens (best ms)")
    print(f"{'format':16s} {'mask':>8s} {'op':>8s} {'linear':>8s} {'dense':>8s} {'ratio':>6s}")
    for fmt in formats:
        start = CLOCK()
        fmt.compute_mask(weight)
        synchronize()
        mask = CLOCK() - start
        _, op = paired_seconds(lambda: None, op_step(fmt, weight, None), args.repeats)
        dense_linear, linear = paired_seconds(
            op_step(dense, weight, inputs), op_step(fmt, weight, inputs), args.repeats
        )
        print(
            f"{fmt!s:16s} {mask * 1e3:8.1f} {op * 1e3:8.1f} {linear * 1e3:8.1f} "
            f"{dense_linear * 1e3:8.1f} {linear / dense_linear:6.2f}"
        )

    if not args.skip_model:
        print(f"\n[model] preset {args.preset}, {args.batch} sequences per step, AdamW")
        print(f"{'format':16s} {'step ms':>8s} {'dense ms':>9s} {'ratio':>6s}")
        dense_step = model_step(dense, args.preset, args.batch, args.device)
        for fmt in formats:
            reference, seconds = paired_seconds(
                dense_step, model_step(fmt, args.preset, args.batch, args.device), args.repeats
            )
            print(
                f"{fmt!s:16s} {seconds * 1e3:8.1f} {reference * 1e3:9.1f} "
                f"{seconds / reference:6.2f}"
            )

    if not args.skip_gmse:
        # A fresh process, as a user runs it: imports, scale ratios and codebooks included.
        command = [sys.executable, "-m", "orchestrator.cli", "gmse", "--standard", "--json"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        count = len(STANDARD_FORMATS)
        print(f"\n[gmse] `compscale gmse --standard` ({count} formats): {elapsed:.1f} s wall")


if __name__ == "__main__":
    main()
