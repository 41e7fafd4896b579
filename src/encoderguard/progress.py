"""Progress bars on stderr (rich), silenced with ``ENCODERGUARD_NO_PROGRESS=1`` or ``progress=False``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True)


def progress_enabled(flag: bool = True) -> bool:
    return flag and os.environ.get("ENCODERGUARD_NO_PROGRESS", "") not in ("1", "true", "yes")


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A rich progress display on stderr; disabled displays accept the same calls and print nothing."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=_console, disable=not progress_enabled(enabled), transient=False)
    with progress:
        yield progress
