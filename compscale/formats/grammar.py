"""Format strings: parse to a `Format`, print back canonically (`str(parse(s))`)."""

from __future__ import annotations

import re

from compscale.formats.activation import WeightsAndActivations
from compscale.formats.backward import BackwardMask
from compscale.formats.base import Format, FormatError
from compscale.formats.compose import Composed
from compscale.formats.gradients import QuantizedBackward
from compscale.formats.noise import NoiseFormat
from compscale.formats.scalar import ScalarFormat
from compscale.formats.sparse import Dense, MagnitudeSparse, NMSparse, SparseFormat
from compscale.formats.vector import VectorFormat

GRAMMAR = (
    "dense | sp{percent} (magnitude pruning, e.g. sp50) | {n}:{m} (e.g. 2:4), either optionally "
    "followed by a backward mask -rms{q} or -rbbm{q} (e.g. sp50-rbbm0.1) | "
    "int{1..8} or fp8|fp6|fp4 (e4m3, e2m3, e2m1), optionally followed by -absmax, "
    "-g{group size}, -had "
    "(e.g. int4-g128-had) | vq{bits}d{dim} (e.g. vq2d4) | noise{relative mse} (e.g. noise0.05) | "
    "SPARSE+SCALAR (e.g. sp50+int4) | w:FORMAT,a:SCALAR (e.g. w:int4,a:int8; w:dense,a:int4 "
    "quantizes activations only) | any of these followed by ,g:SCALAR, which quantizes the "
    "backward pass's GEMMs (g:int8 alone, w:int4,g:int8, w:int4,a:int4,g:int4)"
)

_NUMBER = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
_BACKWARD = rf"(?:-(rms|rbbm){_NUMBER})?"
_SPARSE = re.compile(rf"sp{_NUMBER}{_BACKWARD}")
_NM = re.compile(rf"(\d+):(\d+){_BACKWARD}")
_SCALAR = re.compile(r"(int|fp)(\d+)((?:-[a-z0-9]+)*)")
_VECTOR = re.compile(r"vq(\d+)d(\d+)")
_NOISE = re.compile(rf"noise{_NUMBER}")
_ACTIVATIONS = re.compile(r"w:([^,]+),a:([^,]+)")
_WEIGHTS = re.compile(r"w:([^,]+)")
_GRADIENTS = re.compile(r"(?:(.+),)?g:([^,]+)")


def _scalar(text: str) -> ScalarFormat | None:
    match = _SCALAR.fullmatch(text)
    if not match:
        return None
    grid, bits, suffixes = match.group(1), int(match.group(2)), match.group(3)
    options: dict[str, object] = {}
    for suffix in suffixes.split("-")[1:]:
        if suffix == "absmax" and "absmax" not in options:
            options["absmax"] = True
        elif suffix == "had" and "hadamard" not in options:
            options["hadamard"] = True
        elif re.fullmatch(r"g[1-9]\d*", suffix) and "group_size" not in options:
            options["group_size"] = int(suffix[1:])
        else:
            raise FormatError(f"bad or repeated suffix -{suffix} in {text!r}; accepted: {GRAMMAR}")
    return ScalarFormat(grid, bits, **options)  # type: ignore[arg-type]


def _backward(kind: str | None, deviation: str | None) -> BackwardMask | None:
    return None if kind is None else BackwardMask(kind, float(deviation))  # type: ignore[arg-type]


def _sparse(text: str) -> SparseFormat | None:
    if match := _SPARSE.fullmatch(text):
        return MagnitudeSparse(float(match.group(1)) / 100, _backward(*match.group(2, 3)))
    if match := _NM.fullmatch(text):
        return NMSparse(int(match.group(1)), int(match.group(2)), _backward(*match.group(3, 4)))
    return None


def _single(text: str) -> Format | None:
    if text == "dense":
        return Dense()
    if match := _VECTOR.fullmatch(text):
        return VectorFormat(int(match.group(1)), int(match.group(2)))
    if match := _NOISE.fullmatch(text):
        return NoiseFormat(float(match.group(1)))
    if "+" in text:
        first, _, second = text.partition("+")
        pruning, quantizer = _sparse(first), _scalar(second)
        if pruning is None or quantizer is None:
            return None
        return Composed(pruning, quantizer)
    return _sparse(text) or _scalar(text)


def _forward(text: str) -> Format | None:
    """A format without a backward part: `w:W,a:A` or a single one."""
    if match := _ACTIVATIONS.fullmatch(text):
        weights, activations = _single(match.group(1)), _scalar(match.group(2))
        if weights is None or activations is None:
            return None
        return WeightsAndActivations(weights, activations)
    return _single(text)


def _with_gradients(forward_text: str | None, gradients_text: str) -> Format | None:
    """`[w:W,[a:A,]]g:G`: the forward part is written tagged, or left out when it is dense."""
    if forward_text is None:
        forward: Format | None = Dense()
    elif match := _WEIGHTS.fullmatch(forward_text):
        forward = _single(match.group(1))
    else:
        forward = _forward(forward_text) if _ACTIVATIONS.fullmatch(forward_text) else None
    gradients = _scalar(gradients_text)
    if forward is None or gradients is None:
        return None
    return QuantizedBackward(forward, gradients)


def parse(text: str) -> Format:
    """Parse a format string; FormatError (a ValueError) names the string and the grammar."""
    if not isinstance(text, str):
        raise FormatError(f"a format must be a string, got {type(text).__name__}")
    cleaned = text.strip().lower()
    try:
        if match := _GRADIENTS.fullmatch(cleaned):
            fmt = _with_gradients(match.group(1), match.group(2))
        else:
            fmt = _forward(cleaned)
    except FormatError as error:
        if "accepted:" in str(error):
            raise
        raise FormatError(f"bad format {text!r}: {error}") from None
    if fmt is None:
        raise FormatError(f"unknown format {text!r}; accepted: {GRAMMAR}")
    return fmt


STANDARD_FORMATS: tuple[str, ...] = (
    "dense",
    "sp25",
    "sp50",
    "sp75",
    "sp90",
    "2:4",
    *(f"int{bits}" for bits in range(1, 9)),
    "int4-absmax",
    "int4-g128",
    "int4-had",
    "int2-had",
    "fp8",
    "fp6",
    "fp4",
    "vq1d4",
    "vq2d2",
    "vq2d4",
    "vq3d2",
    "sp50+int4",
    "sp75+int2",
    "noise0.1",
    "noise0.01",
    "noise0.001",
    "w:int4,a:int4",
)
