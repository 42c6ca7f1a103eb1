"""Which errors of a cell function are worth a retry.

A cell that cannot train as configured fails the same way every time: missing token shards
(`FileNotFoundError`), tokens below one global batch, a batch not divisible by the world size, a
data vocabulary larger than the model's, an unknown format or preset (all `ValueError`, as are
pydantic's `ValidationError` and `compscale.formats.FormatError`). The driver records such a
failure once and does not retry it; any other exception (a CUDA fault, a lost file system, an
out-of-memory error) is retried up to the spec's `retries`. A cell function that wants a failure
never retried raises a `ValueError` (or a subclass) for it.
"""

from __future__ import annotations

CONFIGURATION_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)


def is_retryable(error: BaseException) -> bool:
    """False for a configuration error: the same cell would fail again."""
    return not isinstance(error, CONFIGURATION_ERRORS)
