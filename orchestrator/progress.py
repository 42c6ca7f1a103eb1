"""The driver's live view: counts of done / running / failed / pending cells and tokens per second,
and the latest failed cells with the first line of their error.

A rich live table on a terminal; plain lines (one per finished or failed cell, and a summary every
few seconds) when the output is a file or a pipe, e.g. under `ray job submit` or in CI.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

SHOWN_FAILURES = 5  # the live view lists this many of the latest failed cells


class Progress:
    """Counts kept in O(1) per event, so a 10^4-cell sweep costs nothing to display."""

    def __init__(self, sweep: str, total: int, stream: TextIO | None = None, quiet: bool = False):
        self.sweep, self.total = sweep, total
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.counts: Counter[str] = Counter()
        self.failures: list[tuple[str, str, str]] = []  # (cell, error class, first line)
        self.tokens = 0  # training tokens of the cells finished in this run
        self.started = time.monotonic()
        self._last_line = self.started
        self._live = None
        if not quiet and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._table(), console=Console(file=self.stream), refresh_per_second=4
            )
            self._live.start()

    def set(self, state: str, count: int) -> None:
        self.counts[state] = count
        self._refresh()

    def move(self, from_state: str | None, to_state: str, note: str | None = None) -> None:
        """One cell changed state; `note` is printed as a line in plain mode."""
        if from_state:
            self.counts[from_state] -= 1
        self.counts[to_state] += 1
        if note and not self.quiet and self._live is None:
            self.stream.write(f"[{self.sweep}] {note}\n")
            self.stream.flush()
        self._refresh()

    def fail(self, cell_id: str, kind: str, message: str = "") -> None:
        """A running cell failed: counted, named with its error's first line (a plain line, or a
        row under the live table), so a failure is seen when it happens."""
        first = next(iter(message.strip().splitlines()), "")
        self.failures = [*self.failures[-(SHOWN_FAILURES - 1) :], (cell_id, kind, first)]
        note = f"failed {cell_id}: {kind}" + (f": {first}" if first else "")
        self.move("running", "failed", note)

    def warn(self, message: str) -> None:
        """A condition to see now, quiet or not: one line on stderr (above a live table)."""
        line = f"[{self.sweep}] warning: {message}"
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def add_tokens(self, tokens: int) -> None:
        self.tokens += tokens

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(time.monotonic() - self.started, 1e-9)

    def summary(self) -> str:
        parts = [f"{state} {self.counts[state]}" for state in self._order() if self.counts[state]]
        elapsed = time.monotonic() - self.started
        return (
            f"[{self.sweep}] {', '.join(parts) or 'nothing to do'} of {self.total}; "
            f"{self.tokens_per_s:,.0f} tokens/s; {elapsed:.1f} s"
        )

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.stop()
            self._live = None
        if not self.quiet:
            self.stream.write(self.summary() + "\n")
            self.stream.flush()

    @staticmethod
    def _order() -> tuple[str, ...]:
        return ("done", "skipped", "running", "waiting", "pending", "failed", "held", "cancelled")

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._live is not None:
            if now - self._last_line > 0.25:
                self._live.update(self._table())
                self._last_line = now
        elif not self.quiet and now - self._last_line > 10:
            self.stream.write(self.summary() + "\n")
            self.stream.flush()
            self._last_line = now

    def _table(self):
        from rich.console import Group
        from rich.table import Table

        table = Table(title=f"sweep {self.sweep}: {self.total} cells")
        for state in (*self._order(), "tokens/s"):
            table.add_column(state, justify="right")
        table.add_row(*(str(self.counts[s]) for s in self._order()), f"{self.tokens_per_s:,.0f}")
        if not self.failures:
            return table
        failed = Table(title="latest failures (compscale status SWEEP: all, with tracebacks)")
        for column in ("cell", "error", "message"):
            failed.add_column(column, overflow="fold")
        for row in self.failures:
            failed.add_row(*row)
        return Group(table, failed)
