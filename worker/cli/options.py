"""Options shared by the command groups, and the one place a command builds its settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from worker.cli.output import ExitCode, fail

if TYPE_CHECKING:
    from worker.settings import Settings

HomeOption = Annotated[
    Optional[Path],
    typer.Option("--home", envvar="TRIAGE_HOME", help="Folder for intake/, reports/, database, broker"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout")]


def settings_for(home: Path | None) -> Settings:
    """Settings from the environment; ``--home`` wins and is passed on to child processes."""
    from worker.settings import Settings

    if home is not None:
        os.environ["TRIAGE_HOME"] = str(home)
        return Settings(home=home)
    return Settings()


def ready_settings(home: Path | None, database: bool = True) -> Settings:
    """Settings for a read-only command: a home that is not set up yet ends the command with
    one line and exit code 3; nothing is created or migrated."""
    from worker.process.readiness import readiness_problem

    settings = settings_for(home)
    problem = readiness_problem(settings, database=database)
    if problem is not None:
        fail(problem, ExitCode.NOT_READY)
    return settings
