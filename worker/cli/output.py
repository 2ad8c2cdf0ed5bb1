"""How every command writes: results on stdout (plain text, or JSON with ``--json``),
progress bars and log lines on stderr, and exit codes that mean the same everywhere.

A pipe or a file on stdout then holds only results; a terminal on stderr shows a rich
progress bar, anything else (CI logs, journald) gets one plain line per step instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class ExitCode(IntEnum):
    """Exit statuses of ``melanoma-triage``; scripts and container health checks rely on them."""

    OK = 0
    FAILED = 1  # an input was rejected, a change refused, a run or a gate failed
    USAGE = 2  # the command line itself is wrong (click's own code; never used for anything else)
    NOT_READY = 3  # no home folder, database not migrated, or no model: run init / train / promote
    BUSY = 4  # another retraining holds the lease: try again later


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 an input was rejected or the run failed; 2 usage error; "
    "3 not ready (no home folder, database or model: run `init`, train or promote one); "
    "4 busy (another retraining is running). Results go to stdout (--json for machines), "
    "progress and logs to stderr."
)


def emit_json(data: Any) -> None:
    """One JSON document on stdout (dates and paths as strings)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def note(message: str) -> None:
    """A log line for people, on stderr."""
    typer.echo(message, err=True)


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> NoReturn:
    """One line on stderr, then exit with ``code`` (never a traceback for an expected problem)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(int(code))


class Steps:
    """A progress bar on stderr (terminal), or one stamped line per step (anything else)."""

    def __init__(self, progress: Progress, task: TaskID, live: bool) -> None:
        self._progress = progress
        self._task = task
        self.live = live

    def step(self, message: str, completed: float | None = None, total: float | None = None) -> None:
        """A new phase: the bar's label changes, or a line is logged."""
        self._progress.update(self._task, description=message, completed=completed, total=total)
        if not self.live:
            note(f"[{datetime.now(UTC):%H:%M:%S}] {message}")

    def relabel(self, message: str) -> None:
        """Change the bar's label only (nothing is logged)."""
        self._progress.update(self._task, description=message)

    def advance(self, amount: float = 1.0) -> None:
        """Progress within the phase (silent without a terminal)."""
        self._progress.advance(self._task, amount)

    def log(self, line: str) -> None:
        """A line above the bar (terminal) or on stderr."""
        if self.live:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            note(line)


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[Steps]:
    """Progress of one long command, on stderr. ``total`` None: a pulsing bar (steps unknown)."""
    console = Console(stderr=True)
    live = console.is_terminal
    # Prints to stdout go above the bar only when stdout is that same terminal: a redirected
    # stdout must keep the results (rich would otherwise send them to stderr).
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), console=console, disable=not live,
                   redirect_stdout=live and sys.stdout.isatty(), redirect_stderr=live)
    with bar:
        task = bar.add_task(description, total=total)
        steps = Steps(bar, task, live)
        if not live:
            note(f"[{datetime.now(UTC):%H:%M:%S}] {description}")
        yield steps


class _LineTap(io.TextIOBase):
    """A stdout stand-in that turns each printed line into a progress step."""

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # Keras then logs one line per epoch instead of redrawing a bar

    def write(self, text: str) -> int:
        self._buffer += text.replace("\r", "\n")
        *lines, self._buffer = self._buffer.split("\n")
        for line in filter(None, (ln.strip() for ln in lines)):
            self._steps.log(line)
            self._steps.relabel(line[:60])
        return len(text)

    def flush(self) -> None:
        if self._buffer.strip():
            self._steps.log(self._buffer.strip())
        self._buffer = ""


@contextlib.contextmanager
def stdout_as_log(steps: Steps) -> Iterator[None]:
    """Route what library code prints (the trainer's log, Keras epochs) to stderr, so stdout
    holds only the command's result."""
    tap = _LineTap(steps)
    with contextlib.redirect_stdout(tap):
        try:
            yield
        finally:
            tap.flush()
