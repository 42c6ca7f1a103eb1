"""Train one cell: a compressed Llama-style decoder for D tokens; the result is the final val loss.

`train` reads top to bottom, as nanoGPT's loop does: build the model over the cell's
representation, restore the run's checkpoint if there is one, open the loss sink, then for each
step: the step's seed, mask schedule and learning rate, this rank's slice of the global batch (a
pure function of seed and step), one optimizer step (`Learner`: gradient accumulation, clipping,
AdamW), a loss row, a divergence check now and then and a checkpoint when one is due; last, the
result row. Rank 0 writes rows and checkpoints. What differs between a cell and a WSD ladder's
trunk segment or branch (where it starts, stops and writes) is `workers.segment`; a loss that
stops being finite raises `Diverged` (`workers.divergence`).
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from compscale.formats import Format, parse
from workers import checkpoint, data
from workers.compressed_linear import linear_factory, mask_update, update_masks
from workers.config import CellConfig, TrainConfig
from workers.distributed import Runtime, close_runtime, init_runtime
from workers.divergence import DIVERGENCE_CHECK_EVERY, Diverged, DivergenceWatch
from workers.ladder import Ladder, fork_step, trunk_id, trunk_key
from workers.model import Transformer
from workers.schedule import horizon, learning_rate, total_steps
from workers.segment import Segment


def run_cell(
    cell: CellConfig | dict,
    store_uri: str,
    attempt: int | None = None,
    ladder: Ladder | None = None,
) -> dict[str, Any]:
    """Train `cell` as attempt `attempt` (resuming from its latest checkpoint in the store) and
    return its result row; with `ladder`, train its part of a WSD ladder (`workers.segment`:
    a trunk segment returns its id and steps instead). The caller that starts the attempt
    numbers it (the driver's task wrapper); None means "the cell's next attempt"
    (`storage.next_attempt`), for runs outside the orchestrator."""
    cell = cell if isinstance(cell, CellConfig) else CellConfig.model_validate(cell)
    runtime = init_runtime(cell.world_size)
    try:
        return train(cell, store_uri, runtime, attempt, ladder)
    finally:
        close_runtime(runtime)


def run_ladder(cells: Sequence[CellConfig], store_uri: str) -> list[dict[str, Any]]:
    """Train the cells' shared trunk (resuming from its newest checkpoint; skipped when every
    fork checkpoint exists), then each budget's cooldown from its fork, one after another in this
    process (the driver runs the same parts as Ray tasks). Returns the budgets' results."""
    ladder = sorted(cells, key=lambda c: c.tokens)
    keys = {trunk_key(cell) for cell in ladder}
    if len(keys) != 1 or any(cell.train.schedule != "wsd" for cell in ladder):
        raise ValueError("a ladder is WSD cells that differ only in their token budget")
    trunk = trunk_id(ladder[0])
    forks = tuple(sorted({fork_step(cell) for cell in ladder}))
    if not set(forks) <= set(checkpoint.trunk_steps(store_uri, trunk)):
        run_cell(ladder[-1], store_uri, ladder=Ladder(trunk, forks))
    return [run_cell(cell, store_uri, ladder=Ladder(trunk)) for cell in ladder]


def build_model(cell: CellConfig, device: torch.device) -> Transformer:
    """The cell's model at initialisation: seeded by the cell's seed alone, so every format of one
    (N, D, seed) starts from the same latent weights (the paired design the reducer relies on)."""
    torch.manual_seed(cell.seed)
    return Transformer(cell.model, linear_factory(parse(cell.format))).to(device)


def plan_steps(cell: CellConfig, world_size: int) -> tuple[int, int, int]:
    """(optimizer steps, per-rank micro-batch in sequences, micro-batches per step) for a cell."""
    train_config, seq_len = cell.train, cell.model.seq_len
    tokens_per_step = train_config.batch_size * seq_len
    steps = total_steps(cell)
    if steps == 0:
        raise ValueError(
            f"tokens={cell.tokens} is less than one global batch "
            f"({train_config.batch_size} x {seq_len} = {tokens_per_step} tokens)"
        )
    if train_config.batch_size % world_size:
        raise ValueError(f"batch_size={train_config.batch_size} is not divisible by {world_size=}")
    per_rank = train_config.batch_size // world_size
    micro = train_config.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(f"per-rank batch {per_rank} is not divisible by micro_batch_size={micro}")
    return steps, micro, per_rank // micro


def make_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm weights are 1-d and stay undecayed)."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": config.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=device.type == "cuda"
    )


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 where asked, or on CUDA under "auto"; None means plain fp32."""
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def hardware_label(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        name = torch.cuda.get_device_name(runtime.device)
    else:
        name = f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"
    return f"{name} x{runtime.world_size}"


def step_seed(seed: int, step: int) -> int:
    """The torch seed of one step, the same on every rank (noise-injecting formats draw from it)."""
    return (seed * 1_000_003 + step) % (2**63)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    source: data.TokenSource,
    cell: CellConfig,
    runtime: Runtime,
    micro_batch: int,
    dtype: torch.dtype | None,
) -> float:
    """Mean cross-entropy (nats per token) over the fixed held-out windows, shared across ranks."""
    windows = data.validation_windows(
        source.val,
        eval_tokens=cell.train.eval_tokens,
        seq_len=cell.model.seq_len,
        rank=runtime.rank,
        world_size=runtime.world_size,
    )
    totals = torch.zeros(2, dtype=torch.float64, device=runtime.device)
    for chunk in torch.from_numpy(windows).to(runtime.device).split(micro_batch):
        with torch.autocast(runtime.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(chunk[:, :-1])
        losses = F.cross_entropy(
            logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="sum"
        )
        totals += torch.stack(
            [losses.double(), torch.tensor(chunk[:, 1:].numel(), device=totals.device)]
        )
    if runtime.distributed:
        dist.all_reduce(totals)
    return (totals[0] / totals[1]).item()


def load_source(cell: CellConfig) -> data.TokenSource:
    """The cell's token shards, whose vocabulary must fit the model's."""
    source = data.load_tokens(cell.data)
    if source.vocab_size > cell.model.vocab_size:
        raise ValueError(
            f"data vocabulary {source.vocab_size} exceeds model vocab_size={cell.model.vocab_size}"
        )
    return source


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict | None) -> int:
    """Load a checkpoint's model and optimizer state; returns the steps it had completed (0 for
    no checkpoint)."""
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["steps"]


def apply_schedule(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cell: CellConfig,
    fmt: Format,
    step: int,
    total_steps: int,
) -> float:
    """Set the sparsity masks and the learning rate of `step`; returns the rate."""
    config = cell.train
    sparsity = mask_update(
        step,
        horizon(total_steps, config),
        fmt.sparsity,
        config.sparsity_ramp_fraction,
        every_step=fmt.refreshes_mask,
    )
    if sparsity is not None:
        update_masks(model, sparsity)
    lr = learning_rate(step, total_steps, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def result_row(
    cell: CellConfig,
    runtime: Runtime,
    source: data.TokenSource,
    val_loss: float | None,
    train_loss: float,
    wall_time_s: float,
    tokens_per_s: float,
) -> dict[str, Any]:
    """The cell's result (RESULT_SCHEMA less the sink's columns): the final losses, the run's
    wall time and the training rate of this attempt's own steps."""
    return {
        "cell_id": cell.cell_id,
        "model": cell.model_label,
        "params": cell.params,
        "tokens": cell.tokens,
        "format": cell.format,
        "seed": cell.seed,
        "val_loss": val_loss,
        "train_loss": train_loss,
        "steps": total_steps(cell),
        "wall_time_s": wall_time_s,
        "tokens_per_s": tokens_per_s,
        "hardware": hardware_label(runtime),
        "world_size": runtime.world_size,
        "data_fingerprint": source.fingerprint,
    }


class Learner:
    """One rank's model and AdamW, and how a step trains them: the rank's windows in
    micro-batches (under DDP, gradients are synchronised on the last one only), then clipping
    and the optimizer step. `forward` is the model under DDP and `torch.compile` where those
    are on; `model` stays the bare one (masks, evaluation, checkpoints)."""

    def __init__(
        self,
        model: Transformer,
        optimizer: torch.optim.AdamW,
        cell: CellConfig,
        runtime: Runtime,
        micro_batch: int,
        accumulation: int,
    ):
        self.model, self.optimizer, self.runtime = model, optimizer, runtime
        self.ddp: nn.Module = model
        if runtime.distributed:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(
                model, device_ids=device_ids, broadcast_buffers=False
            )
        self.forward = torch.compile(self.ddp) if cell.train.compile else self.ddp
        self.parameters = list(model.parameters())
        self.grad_clip = cell.train.grad_clip or math.inf
        self.dtype = autocast_dtype(cell.train, runtime.device)
        self.micro_batch, self.accumulation = micro_batch, accumulation

    def step(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over `windows`; returns (the training loss averaged over all
        ranks, the gradient norm before clipping), both 0-d tensors left on the device."""
        device = self.runtime.device
        train_loss = torch.zeros((), device=device)
        for index, chunk in enumerate(torch.from_numpy(windows).to(device).split(self.micro_batch)):
            last_micro = index == self.accumulation - 1
            no_sync = (
                self.ddp.no_sync()
                if self.ddp is not self.model and not last_micro
                else contextlib.nullcontext()
            )
            with no_sync:
                with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    logits = self.forward(chunk[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten())
                (loss / self.accumulation).backward()
            train_loss += loss.detach() / self.accumulation
        grad_norm = nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.runtime.distributed:
            dist.all_reduce(train_loss)
            train_loss /= self.runtime.world_size
        return train_loss, grad_norm


def train(
    cell: CellConfig,
    store_uri: str,
    runtime: Runtime,
    attempt: int | None = None,
    ladder: Ladder | None = None,
) -> dict[str, Any]:
    """The training loop of one cell, or of its `ladder` part, on one rank; returns the result
    row (on every rank), or for a trunk segment its id and steps."""
    started = time.perf_counter()
    config, fmt = cell.train, parse(cell.format)
    source = load_source(cell)
    total_steps, micro_batch, accumulation = plan_steps(cell, runtime.world_size)
    tokens_per_step = config.batch_size * cell.model.seq_len
    segment = Segment(cell, store_uri, ladder)

    model = build_model(cell, runtime.device)
    optimizer = make_optimizer(model, config, runtime.device)
    start = segment.start(runtime.device)
    start_step = restore(model, optimizer, start.state)
    learner = Learner(model, optimizer, cell, runtime, micro_batch, accumulation)
    sink = segment.open_sink(attempt, start_step, start.forked) if runtime.is_main else None

    loop_started = previous = time.perf_counter()
    val_loss = None
    watch = DivergenceWatch(runtime.device)
    for step in range(start_step, segment.stop):
        torch.manual_seed(step_seed(cell.seed, step))
        lr = apply_schedule(model, optimizer, cell, fmt, step, total_steps)
        windows = data.batch_windows(
            source.train,
            seed=cell.seed,
            step=step,
            batch_size=config.batch_size,
            seq_len=cell.model.seq_len,
            rank=runtime.rank,
            world_size=runtime.world_size,
        )
        train_loss, grad_norm = learner.step(windows)
        watch.mark(step, train_loss)  # the same on every rank, so every rank stops together

        done = step + 1
        evaluated = done == total_steps or bool(config.eval_every and done % config.eval_every == 0)
        step_val_loss = (
            evaluate(model, source, cell, runtime, micro_batch, learner.dtype)
            if evaluated
            else None
        )
        val_loss = step_val_loss if evaluated else val_loss
        now = time.perf_counter()
        if sink is not None:
            sink.append(
                step=step,
                tokens=done * tokens_per_step,
                train_loss=train_loss,
                val_loss=step_val_loss,
                lr=lr,
                grad_norm=grad_norm,
                tokens_per_s=tokens_per_step / (now - previous),
                wall_time_s=now - started,
            )
        previous = now
        due = segment.checkpoint_due(done)
        if evaluated or due or done % DIVERGENCE_CHECK_EVERY == 0:  # the end is evaluated
            try:
                watch.check(step, step_val_loss)
            except Diverged:
                if sink is not None:
                    sink.flush()  # the rows up to the divergence are its evidence
                raise
        if due and runtime.is_main:
            sink.flush()  # rows up to a checkpoint are durable, so a resumed run leaves no gap
            segment.save(done, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})

    if segment.is_trunk:
        if sink is not None:
            sink.flush()
        return {"trunk_id": ladder.trunk_id, "steps": segment.stop}
    train_seconds = time.perf_counter() - loop_started
    result = result_row(
        cell,
        runtime,
        source,
        val_loss=val_loss,
        train_loss=float(train_loss),
        wall_time_s=time.perf_counter() - started,
        tokens_per_s=(total_steps - start_step) * tokens_per_step / max(train_seconds, 1e-9),
    )
    if sink is not None:
        sink.write_result(result)
        result["attempt"] = sink.attempt
        checkpoint.clear(store_uri, cell.cell_id)
    return result
