"""Train one cell: a compressed Llama-style decoder for D tokens; the result is the final val loss.

The loop reads top to bottom: build the model over the cell's representation, resume from the
latest checkpoint if there is one, then for each step: mask schedule, learning rate, this rank's
slice of the global batch (a pure function of seed and step), gradient accumulation, clipping,
AdamW, a loss row, and a checkpoint every `checkpoint_every` steps. Rank 0 writes rows and
checkpoints. A loss that stops being finite raises `Diverged`, found without a device sync per
step (`_DivergenceWatch`, read every `DIVERGENCE_CHECK_EVERY` steps, at evaluations, before a
checkpoint and at the end).
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Sequence
from typing import Any

import pyarrow.compute as pc
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from compscale.formats import parse
from workers import checkpoint, data, storage
from workers.compressed_linear import linear_factory, mask_update, update_masks
from workers.config import CellConfig, TrainConfig
from workers.distributed import Runtime, close_runtime, init_runtime
from workers.ladder import Ladder, fork_step, trunk_id, trunk_key
from workers.layout import Layout, resolve
from workers.model import Transformer
from workers.schedule import cooldown_start, horizon, learning_rate, total_steps
from workers.schema import LOSS_SCHEMA
from workers.sink import LossSink, read_losses
from workers.trackers import open_trackers

DIVERGENCE_CHECK_EVERY = 50  # steps between reads of the non-finite-loss flag (one sync each)


class Diverged(ValueError):
    """The training or validation loss stopped being finite: the cell fails (`error_class`
    Diverged, the step in the message) instead of storing a NaN result. The same config diverges
    again, so it is a value to change (a learning rate, most often)."""


class _DivergenceWatch:
    """The first step whose training loss is not finite, kept on the device: marking a step
    costs no host sync; `error` reads it (one sync) only when the loop asks."""

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), device=device)

    def mark(self, step: int, loss: torch.Tensor) -> None:
        new = (self.first_step < 0) & ~torch.isfinite(loss)
        self.first_step = torch.where(new, step, self.first_step)
        self.loss = torch.where(new, loss, self.loss)

    def error(self, step: int, val_loss: float | None) -> Diverged | None:
        if (first := int(self.first_step)) >= 0:
            return Diverged(f"training loss became {float(self.loss)} at step {first}")
        if val_loss is not None and not math.isfinite(val_loss):
            return Diverged(f"validation loss became {val_loss} at step {step}")
        return None


def run_cell(
    cell: CellConfig | dict,
    store_uri: str,
    attempt: int | None = None,
    ladder: Ladder | None = None,
) -> dict[str, Any]:
    """Train `cell` as attempt `attempt` (resuming from its latest checkpoint in the store) and
    return its result row. The caller that starts the attempt numbers it (the driver's task
    wrapper); None means "the cell's next attempt" (`storage.next_attempt`), for runs outside the
    orchestrator."""
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
    if runtime.world_size > 1:
        dist.all_reduce(totals)
    return (totals[0] / totals[1]).item()


def _start_state(
    cell: CellConfig,
    store_uri: str,
    runtime: Runtime,
    ladder: Ladder | None,
) -> dict[str, Any] | None:
    """The run's own latest checkpoint: the cell's, or a trunk's newest up to its last fork."""
    if ladder is None or not ladder.forks:
        return checkpoint.load_latest(store_uri, cell.cell_id, runtime.device)
    steps = [
        s for s in checkpoint.trunk_steps(store_uri, ladder.trunk_id) if s <= max(ladder.forks)
    ]
    return (
        checkpoint.load_trunk(store_uri, ladder.trunk_id, steps[-1], runtime.device)
        if steps
        else None
    )


def train(
    cell: CellConfig,
    store_uri: str,
    runtime: Runtime,
    attempt: int | None = None,
    ladder: Ladder | None = None,
) -> dict[str, Any]:
    """The training loop of one cell on one rank; returns the result row (on every rank), or
    for a trunk its id and steps."""
    started = time.perf_counter()
    config, seq_len = cell.train, cell.model.seq_len
    fmt = parse(cell.format)
    source = data.load_tokens(cell.data)
    if source.vocab_size > cell.model.vocab_size:
        raise ValueError(
            f"data vocabulary {source.vocab_size} exceeds model vocab_size={cell.model.vocab_size}"
        )
    total_steps, micro_batch, accumulation = plan_steps(cell, runtime.world_size)
    trunk = ladder is not None and bool(ladder.forks)
    stop = max(ladder.forks) if trunk else total_steps
    tokens_per_step = config.batch_size * seq_len
    dtype = autocast_dtype(config, runtime.device)

    model = build_model(cell, runtime.device)
    optimizer = make_optimizer(model, config, runtime.device)
    parameters = list(model.parameters())
    state, forked = _start_state(cell, store_uri, runtime, ladder), False
    if state is None and ladder is not None and not trunk:
        fork = cooldown_start(total_steps, config)
        state = checkpoint.load_trunk(store_uri, ladder.trunk_id, fork, runtime.device)
        if state is None:
            raise FileNotFoundError(f"trunk {ladder.trunk_id} has no checkpoint at step {fork}")
        forked = True
    start_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["steps"]

    ddp = model
    if runtime.world_size > 1:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    forward = torch.compile(ddp) if config.compile else ddp

    sink = None
    if runtime.is_main:
        location = resolve(store_uri)
        layout = Layout(location.root)
        paths = layout.trunk(ladder.trunk_id) if trunk else layout.cell(cell.cell_id)
        if not trunk:
            storage.write_cell_config(location.filesystem, layout, cell)
        if attempt is None or trunk:
            attempt = storage.next_attempt(location.filesystem, paths)
        trackers = None if trunk else open_trackers(cell, store_uri, attempt, start_step)
        sink = LossSink(store_uri, cell.cell_id, attempt, paths=paths, trackers=trackers)
        if forked:  # the trunk's rows are this cell's first steps
            trunk_rows = read_losses(store_uri, "", paths=layout.trunk(ladder.trunk_id))
            for row in trunk_rows.filter(pc.less(trunk_rows["step"], start_step)).to_pylist():
                sink.append(**{name: row[name] for name in LOSS_SCHEMA.names[2:]})

    loop_started = previous = time.perf_counter()
    val_loss = None
    watch = _DivergenceWatch(runtime.device)
    for step in range(start_step, stop):
        torch.manual_seed(step_seed(cell.seed, step))
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

        windows = data.batch_windows(
            source.train,
            seed=cell.seed,
            step=step,
            batch_size=config.batch_size,
            seq_len=seq_len,
            rank=runtime.rank,
            world_size=runtime.world_size,
        )
        train_loss = torch.zeros((), device=runtime.device)
        for index, chunk in enumerate(
            torch.from_numpy(windows).to(runtime.device).split(micro_batch)
        ):
            last_micro = index == accumulation - 1
            no_sync = (
                ddp.no_sync() if ddp is not model and not last_micro else contextlib.nullcontext()
            )
            with no_sync:
                with torch.autocast(runtime.device.type, dtype=dtype, enabled=dtype is not None):
                    logits = forward(chunk[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten())
                (loss / accumulation).backward()
            train_loss += loss.detach() / accumulation
        grad_norm = nn.utils.clip_grad_norm_(parameters, config.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if runtime.world_size > 1:
            dist.all_reduce(train_loss)
            train_loss /= runtime.world_size
        watch.mark(step, train_loss)  # the same on every rank, so every rank stops together

        done = step + 1
        evaluated = done == total_steps or bool(config.eval_every and done % config.eval_every == 0)
        step_val_loss = (
            evaluate(model, source, cell, runtime, micro_batch, dtype) if evaluated else None
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
        due = config.checkpoint_every and done % config.checkpoint_every == 0 and done < stop
        due = due or (trunk and done in ladder.forks)
        checked = evaluated or due or done % DIVERGENCE_CHECK_EVERY == 0  # the end is evaluated
        if checked and (error := watch.error(step, step_val_loss)) is not None:
            if sink is not None:
                sink.flush()  # the rows up to the divergence are its evidence
            raise error
        if due and runtime.is_main:
            sink.flush()  # rows up to a checkpoint are durable, so a resumed run leaves no gap
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            if trunk:
                checkpoint.save_trunk(store_uri, ladder.trunk_id, done, state)
            else:
                checkpoint.save(store_uri, cell.cell_id, done, state)

    if trunk:
        if sink is not None:
            sink.flush()
        return {"trunk_id": ladder.trunk_id, "steps": stop}
    trained_steps = total_steps - start_step
    train_seconds = time.perf_counter() - loop_started
    result = {
        "cell_id": cell.cell_id,
        "model": cell.model_label,
        "params": cell.params,
        "tokens": cell.tokens,
        "format": cell.format,
        "seed": cell.seed,
        "val_loss": val_loss,
        "train_loss": float(train_loss),
        "steps": total_steps,
        "wall_time_s": time.perf_counter() - started,
        "tokens_per_s": trained_steps * tokens_per_step / max(train_seconds, 1e-9),
        "hardware": hardware_label(runtime),
        "world_size": runtime.world_size,
        "data_fingerprint": source.fingerprint,
    }
    if sink is not None:
        sink.write_result(result)
        result["attempt"] = sink.attempt
        checkpoint.clear(store_uri, cell.cell_id)
    return result
