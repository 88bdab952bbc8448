"""Progress reporting for long scans: a user callback, a rich bar, or nothing.

The scan calls ``callback(done, total, name)`` once per finished matrix (``done`` counts from
1 to ``total``; ``name`` is the tensor just finished).

Example:
    >>> calls = []
    >>> with progress_reporter(lambda d, t, n: calls.append((d, t, n)), 2) as report:
    ...     report(1, 2, "a.weight")
    ...     report(2, 2, "b.weight")
    >>> calls[-1]
    (2, 2, 'b.weight')
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Callable, Optional, Union

#: ``callback(done, total, name)``.
ProgressCallback = Callable[[int, int, str], object]


def wants_bar(progress: Union[bool, ProgressCallback, None]) -> bool:
    """Whether ``progress`` asks for the default bar: True, or None when stderr is a terminal.

    Example:
        >>> wants_bar(False), wants_bar(True)
        (False, True)
    """
    if progress is None:
        return sys.stderr.isatty()
    return progress is True


@contextlib.contextmanager
def progress_reporter(
    progress: Union[bool, ProgressCallback, None],
    total: int,
    description: str = "spectra",
) -> Iterator[Optional[ProgressCallback]]:
    """The callback to hand to a scan, for the ``progress`` argument of
    :func:`lora_rank.analyze`: the user's callable as is, a rich bar on stderr (``True``, or
    ``None`` in a terminal), or ``None`` (``False``, or ``None`` outside a terminal).

    Example:
        >>> with progress_reporter(False, 10) as report:
        ...     report is None
        True
    """
    if callable(progress):
        yield progress
        return
    if not wants_bar(progress) or total == 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[tensor]}", style="dim"),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=total, tensor="")

    def update(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done, total=total, tensor=name)

    with bar:
        yield update
