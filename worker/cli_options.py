"""Options shared by the command groups, and the one place a command builds its settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

HomeOption = Annotated[
    Optional[Path],
    typer.Option("--home", envvar="TRIAGE_HOME", help="Folder for intake/, reports/, database, broker"),
]


def settings_for(home: Path | None):
    """Settings from the environment; ``--home`` wins and is passed on to child processes."""
    from worker.settings import Settings

    if home is not None:
        os.environ["TRIAGE_HOME"] = str(home)
        return Settings(home=home)
    return Settings()
