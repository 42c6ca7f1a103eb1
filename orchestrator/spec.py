"""The sweep spec: a YAML file parsed into pydantic models that double as its schema.

Every error names the file, the YAML path of the field (`models[1].train.lr`) and what was expected,
so a typo fails in `compscale validate` before anything reaches Ray or the store.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from workers.config import DataConfig, ModelConfig, Tracker, TrainConfig, resolve_model
from workers.trackers import missing_extra


class SpecError(ValueError):
    """A spec the user must fix: one line naming file, field path and what was expected."""


def canonical_format(text: str) -> str:
    """The canonical spelling of a representation (cell ids hash it), or a one-line error."""
    from compscale.formats import parse  # here, not at the top: `compscale status` needs no torch

    return str(parse(text))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # `.inf`, `.nan`


# TrainConfig with every field optional and the same bounds: a per-model or per-cell override.
def _optional(annotation: Any, metadata: list[Any]) -> Any:
    return (Annotated[(annotation, *metadata)] if metadata else annotation) | None


TrainOverrides = create_model(
    "TrainOverrides",
    __base__=_Strict,
    **{
        name: (_optional(info.annotation, info.metadata), None)
        for name, info in TrainConfig.model_fields.items()
    },
)


def _preset_name_to_mapping(value: Any) -> Any:
    return {"preset": value} if isinstance(value, str) else value


class ModelEntry(_Strict):
    """One model size: a preset name, or explicit dimensions (laid over the preset if both are
    given); `train` overrides the sweep's training settings for this size only (a learning rate
    per size matters at small scale: docs/design.md, 'Small models are noisy')."""

    preset: str | None = None
    d_model: int | None = Field(default=None, gt=0)
    n_layers: int | None = Field(default=None, gt=0)
    n_heads: int | None = Field(default=None, gt=0)
    ffn_hidden: int | None = Field(default=None, ge=0)
    vocab_size: int | None = Field(default=None, gt=0)
    seq_len: int | None = Field(default=None, gt=0)
    train: TrainOverrides = TrainOverrides()

    @model_validator(mode="after")
    def _resolvable(self) -> ModelEntry:
        self.resolve()
        return self

    def resolve(self) -> ModelConfig:
        """The explicit shape, so presets never reach a cell id."""
        return resolve_model(self.model_dump(exclude={"train"}, exclude_none=True))


def _installed(tracker: Tracker) -> Tracker:
    """A tracker whose extra is missing fails validation, not the cells it would watch."""
    if (message := missing_extra(tracker)) is not None:
        raise ValueError(message)
    return tracker


Model = Annotated[ModelEntry, BeforeValidator(_preset_name_to_mapping)]
Format = Annotated[str, AfterValidator(canonical_format)]
InstalledTracker = Annotated[Tracker, AfterValidator(_installed)]


class Resources(_Strict):
    """What one worker of a cell asks Ray for (a cell of world size k asks k times this)."""

    cpus: float = Field(default=1, ge=0)
    gpus: float = Field(default=0, ge=0)


class ExtraCell(_Strict):
    """One explicit cell beside the grid; `train` overrides the sweep's, then the model's."""

    model: Model
    format: Format
    tokens: int | None = Field(default=None, gt=0)
    tokens_per_param: float | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0)
    train: TrainOverrides = TrainOverrides()

    @model_validator(mode="after")
    def _one_budget(self) -> ExtraCell:
        if (self.tokens is None) == (self.tokens_per_param is None):
            raise ValueError("expected exactly one of tokens or tokens_per_param")
        return self


class Adaptive(_Strict):
    """An adaptive sweep (docs/autopilot.md): after round 0 (the spec's cells) the driver adds
    whole (N, D, seed) groups, those that shrink the question's interval most per FLOP, round by
    round, until the interval is `target` wide (half-width, on the log scale: 0.1 ~ +-10%), the
    next round would pass `budget_flops`, or no candidate helps."""

    question: str = Field(
        description="composition A B | rho FORMAT | order F1 F2 ... | predict N D FORMAT"
    )
    target: float | None = Field(
        default=None, gt=0, description="half-width of the interval that decides (not for order)"
    )
    budget_flops: float = Field(gt=0, description="hard cap on the sweep's FLOPs, round 0 in")
    round_flops: float = Field(gt=0, description="FLOPs one round after round 0 may add")
    level: float = Field(default=0.95, gt=0, lt=1, description="coverage over all looks")
    bootstrap: int = Field(default=200, ge=20, description="resamples of each round's fit")
    seed: int = Field(default=0, ge=0, description="the fits' bootstrap seed")
    max_seeds: int = Field(default=8, ge=1, description="seeds per (N, D) at most")
    token_factors: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1.0, 2.0],
        description="candidate token budgets: each model's budgets times these",
    )

    @model_validator(mode="after")
    def _question(self) -> Adaptive:
        from compscale.questions import parse_question

        try:
            question = parse_question(self.question, canonical_format)
        except ValueError as error:
            raise ValueError(f"question: {error}") from None
        if self.target is None and not question.judged_on_sign:
            raise ValueError("target: expected a positive half-width for this question")
        return self


class SweepSpec(_Strict):
    """A sweep: the grid models × token budgets × formats × seeds, plus extra cells.

    Token budgets are absolute (`tokens`, in tokens) and/or relative (`tokens_per_param`, tokens per
    non-embedding parameter, rounded to whole tokens for each model).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    models: list[Model] = Field(default_factory=list)
    tokens: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    tokens_per_param: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    formats: list[Format] = Field(default_factory=list)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0])
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    world_size: int = Field(default=1, gt=0)
    resources: Resources = Resources()
    retries: int = Field(default=2, ge=0, description="application-error retries per cell")
    max_in_flight: int = Field(default=0, ge=0, description="cells submitted at once; 0 = auto")
    extra_cells: list[ExtraCell] = Field(default_factory=list)
    adaptive: Adaptive | None = Field(
        default=None, description="ask a question and let the driver add cells until answered"
    )
    trackers: list[InstalledTracker] = Field(
        default_factory=list,
        description="where each cell's loss rows are mirrored besides the store: tensorboard, "
        "wandb (workers.trackers); none by default, and never part of a cell's id",
    )

    @model_validator(mode="after")
    def _has_cells(self) -> SweepSpec:
        if self.models and not self.formats:
            raise ValueError("formats: expected at least one format for the grid")
        if self.models and not (self.tokens or self.tokens_per_param):
            raise ValueError("tokens: expected tokens and/or tokens_per_param for the grid")
        if not self.models and not self.extra_cells:
            raise ValueError("models: the sweep has no cells; expected models or extra_cells")
        if self.adaptive is not None:
            self._can_answer(self.adaptive)
        return self

    def _can_answer(self, adaptive: Adaptive) -> None:
        """The grid's formats include every format the question needs (dense anchors rho, a
        composition needs A, B and A+B), so that each round's groups can answer it."""
        from compscale.questions import parse_question

        question = parse_question(adaptive.question, canonical_format)
        if not self.models:
            raise ValueError("adaptive.question: an adaptive sweep needs a grid (models, formats)")
        for name in question.needed():
            if name not in self.formats:
                raise ValueError(
                    f"adaptive.question: {question.text!r} needs format {name}, which the "
                    f"spec's formats ({', '.join(self.formats)}) lack"
                )

    def train_for(self, *overrides: BaseModel) -> TrainConfig:
        """The sweep's training settings with each override laid on in order (model, then cell)."""
        merged = self.train.model_dump()
        for override in overrides:
            merged |= override.model_dump(exclude_none=True)
        return TrainConfig.model_validate(merged)


def _path(loc: tuple[Any, ...]) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.lstrip(".")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at a YAML path, for the message on an unknown field."""
    model: type[BaseModel] | None = SweepSpec
    for part in loc:
        if isinstance(part, str) and model is not None:
            model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model else []


def _describe(error: dict[str, Any]) -> str:
    """`<yaml path>: <what was expected>` for one pydantic error."""
    path = _path(error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(error["loc"][:-1]))
        return f"{path}: unknown field (a typo?); expected one of: {allowed}"
    message = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])
    nested = re.match(r"^([a-z_.]+): (.*)$", message)  # a whole-model check naming its field
    if nested and (not path or isinstance(error["input"], dict)):  # a model's own check
        path, message = ".".join(filter(None, (path, nested[1]))), nested[2]
    if error["type"] not in ("missing", "value_error") and not isinstance(error["input"], dict):
        message += f", got {error['input']!r}"
    return f"{path or '(top level)'}: {message}"


def parse_spec(text: str, source: str = "<spec>") -> SweepSpec:
    """Parse YAML text into a spec; errors read `<source>: <yaml path>: <what was expected>`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise SpecError(
            f"{source}{where}: not valid YAML: {getattr(error, 'problem', error)}"
        ) from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of sweep fields, got {type(data).__name__}")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as error:
        errors = error.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpecError(f"{source}: {_describe(errors[0])}{more}") from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; a missing file is a FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such spec file")
    return parse_spec(path.read_text(), source=str(path))
