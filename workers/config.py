"""The resolved configuration of one cell: the contract between the orchestrator and the worker.

A cell is (model, tokens, representation, seed, training hyper-parameters, data). Its id is a stable
hash of this canonical, fully resolved config, so the same cell in two sweeps is the same cell and a
changed hyper-parameter is a new cell. Presets resolve to explicit dimensions before hashing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

BYTE_VOCAB = 256


class _Frozen(BaseModel):
    # inf and nan pass `gt=0`-style bounds (or fail them with a misleading message) and a run
    # cannot use them, so every config refuses them by name.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelConfig(_Frozen):
    """A Llama-style decoder's shape. `ffn_hidden` defaults to 8/3 * d_model rounded up to 16."""

    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    ffn_hidden: int = Field(default=0, ge=0)
    vocab_size: int = Field(default=BYTE_VOCAB, gt=0)
    seq_len: int = Field(default=256, gt=0)

    @model_validator(mode="after")
    def _resolve(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension d_model / n_heads must be even for rotary embeddings")
        if self.ffn_hidden == 0:
            object.__setattr__(self, "ffn_hidden", 16 * math.ceil(8 * self.d_model / 3 / 16))
        return self

    @property
    def non_embedding_params(self) -> int:
        """Exact count of parameters outside the token embedding and the output head.

        Per block: attention q, k, v, o (4 d^2), SwiGLU gate, up, down (3 d h), two RMSNorm
        weights (2 d); plus the final RMSNorm (d). Rotary embeddings carry no parameters.
        """
        d, h = self.d_model, self.ffn_hidden
        return self.n_layers * (4 * d * d + 3 * d * h + 2 * d) + d


# Presets by non-embedding size. The small ones suit 2 CPU cores; 30m..200m follow QuEST's shapes.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(d_model=32, n_layers=4, n_heads=2),
    "100k": ModelConfig(d_model=48, n_layers=4, n_heads=3),
    "200k": ModelConfig(d_model=64, n_layers=4, n_heads=4),
    "400k": ModelConfig(d_model=96, n_layers=4, n_heads=6),
    "800k": ModelConfig(d_model=128, n_layers=4, n_heads=8),
    "30m": ModelConfig(d_model=640, n_layers=6, n_heads=5, seq_len=1024),
    "50m": ModelConfig(d_model=768, n_layers=7, n_heads=6, seq_len=1024),
    "100m": ModelConfig(d_model=1024, n_layers=8, n_heads=8, seq_len=1024),
    "200m": ModelConfig(d_model=1280, n_layers=10, n_heads=10, seq_len=1024),
}


def preset(name: str) -> ModelConfig:
    """Look up a size preset; the error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}"
        ) from None


def resolve_model(value: str | Mapping[str, Any] | ModelConfig) -> ModelConfig:
    """The one preset resolver (sweep specs and cell files alike): a preset name, a mapping of
    explicit dimensions, or a mapping with `preset` whose other keys override the preset's."""
    if isinstance(value, ModelConfig):
        return value
    if isinstance(value, str):
        return preset(value)
    fields = dict(value)
    name = fields.pop("preset", None)
    if name is not None:
        return ModelConfig.model_validate(preset(name).model_dump() | fields)
    missing = [key for key in ("d_model", "n_layers", "n_heads") if key not in fields]
    if missing:
        raise ValueError(f"expected a preset name or d_model, n_layers, n_heads; missing {missing}")
    return ModelConfig.model_validate(fields)


class TrainConfig(_Frozen):
    """Optimiser and loop settings. Batch sizes are in sequences of `ModelConfig.seq_len` tokens."""

    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, ge=0)
    batch_size: int = Field(default=16, gt=0, description="global sequences per optimiser step")
    micro_batch_size: int = Field(
        default=0, ge=0, description="per-rank sequences; 0 = no accumulation"
    )
    sparsity_ramp_fraction: float = Field(default=0.25, ge=0, le=1)
    eval_every: int = Field(
        default=0, ge=0, description="steps between evaluations; 0 = at the end only"
    )
    eval_tokens: int = Field(default=65536, gt=0)
    checkpoint_every: int = Field(
        default=0, ge=0, description="steps; 0 = no intermediate checkpoints"
    )
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    schedule: Literal["cosine", "wsd"] = Field(
        default="cosine",
        description="cosine: warm-up then cosine decay over the cell's steps; wsd: warm-up, "
        "constant, then a 1-sqrt cooldown over the last cooldown_fraction (workers.ladder)",
    )
    cooldown_fraction: float = Field(default=0.2, gt=0, le=1)
    horizon_steps: int = Field(
        default=0,
        ge=0,
        description="wsd: the steps warmup_fraction and sparsity_ramp_fraction are fractions of "
        "(sweeps set the model's smallest budget, so every budget shares one trunk); 0 = own steps",
    )


class DataConfig(_Frozen):
    """Where tokens come from: a shipped byte-level corpus (`bundled`: Python code, `bundled-kjv`:
    English prose; `workers.data.BUNDLED`) or a shard dir / URI."""

    source: str = "bundled"
    val_fraction: float = Field(default=0.05, gt=0, lt=1)


Tracker = Literal["tensorboard", "wandb"]


class TrackingConfig(_Frozen):
    """Experiment trackers that mirror a run's loss rows (`workers.trackers`). How a run is
    watched, not what it computes: it stays out of the cell's id and its `cell.json`."""

    trackers: tuple[Tracker, ...] = ()
    sweep: str = Field(default="", description="the sweep that started the run: the W&B group")


# Fields that change how a run is carried out but not its result; they stay out of the cell's id.
_NOT_IDENTITY = {"world_size": True, "tracking": True, "train": {"checkpoint_every", "eval_every"}}
# Fields a cosine cell ignores: left out of its id, so cells from before WSD keep their ids.
_WSD_ONLY = ("schedule", "cooldown_fraction", "horizon_steps")


class CellConfig(_Frozen):
    """One training run: what the orchestrator hands to `workers.run_cell`."""

    model: ModelConfig
    format: str
    tokens: int = Field(gt=0, description="training tokens D")
    seed: int = Field(default=0, ge=0)
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    world_size: int = Field(default=1, gt=0)
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("model", mode="before")
    @classmethod
    def _resolve_model(cls, value: Any) -> Any:
        return resolve_model(value) if isinstance(value, (str, Mapping)) else value

    @field_validator("format")
    @classmethod
    def _canonical_format(cls, value: str) -> str:
        """Cell ids hash the canonical spelling, so it is enforced here, where every cell is
        built (spec expansion, cell files, the store), not left to each caller."""
        from compscale.formats import parse

        return str(parse(value))

    @model_serializer(mode="wrap")
    def _without_idle_tracking(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave `tracking` out of a dump while no tracker is on, so dumps of cells (the driver's
        task arguments, the `cells` view's `config`) read as they did before trackers existed."""
        dumped = handler(self)
        if not self.tracking.trackers:
            dumped.pop("tracking", None)
        return dumped

    @property
    def params(self) -> int:
        """N: non-embedding parameters."""
        return self.model.non_embedding_params

    @property
    def flops(self) -> float:
        """Training compute estimate 6ND in FLOPs (N non-embedding parameters, D tokens)."""
        return 6.0 * self.params * self.tokens

    @property
    def model_label(self) -> str:
        """The preset name when the shape is a preset, else `d<width>l<depth>h<heads>`."""
        for name, shape in PRESETS.items():
            if shape == self.model:
                return name
        return f"d{self.model.d_model}l{self.model.n_layers}h{self.model.n_heads}"

    def canonical_json(self) -> str:
        """The identity of the cell: every field that changes the result, sorted, no labels."""
        identity = self.model_dump(mode="json", exclude=_NOT_IDENTITY)
        if self.train.schedule == "cosine":
            identity["train"] = {
                key: value for key, value in identity["train"].items() if key not in _WSD_ONLY
            }
        return json.dumps(identity, sort_keys=True, separators=(",", ":"))

    @property
    def cell_id(self) -> str:
        """Readable prefix plus a content hash: `<model>-<format>-s<seed>-<hash12>`."""
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9.+-]", "_", f"{self.model_label}-{self.format}-s{self.seed}")
        return f"{slug}-{digest}"
