"""Ray's token-authentication warning (several lines with a URL, on every embedded start) replaced
by one line of ours, printed only when it matters: joining a cluster others can reach."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _TokenAuthNotices(logging.Filter):
    """Drops Ray's token-authentication warnings and remembers them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Token authentication is"):
            self.seen.append(message)
            return False
        return True


@contextlib.contextmanager
def token_auth_notice(remote: bool) -> Iterator[None]:
    """Around `ray.init`: Ray's warning is dropped; for a `remote` cluster one line says whether
    token authentication is on. An embedded Ray listens on 127.0.0.1 only: nothing to say."""
    notices = _TokenAuthNotices()
    logger = logging.getLogger(AUTH_LOGGER)
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)
    if remote and notices.seen:
        state = "off" if "disabled" in notices.seen[-1] else "on"
        advice = (
            "anyone who can reach the cluster can run code on it; RAY_AUTH_MODE=token turns it on"
            if state == "off"
            else "RAY_AUTH_MODE=disabled turns it off"
        )
        print(f"ray: token authentication is {state} ({advice})", file=sys.stderr)
