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
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional, Union

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


class _BarUpdate:
    """Updates a rich bar per finished matrix; :meth:`fetched` counts bytes downloaded (a
    remote scan), shown with their rate."""

    def __init__(self, bar: Any, task: Any, total_bytes: Optional[int]) -> None:
        self.bar, self.task, self.total_bytes = bar, task, total_bytes
        self.bytes = 0
        self.start = time.monotonic()

    def __call__(self, done: int, total: int, name: str) -> None:
        self.bar.update(self.task, completed=done, total=total, tensor=name)

    def fetched(self, nbytes: int) -> None:
        self.bytes += nbytes
        rate = self.bytes / max(time.monotonic() - self.start, 1e-9)
        text = f"{_size(self.bytes)}/{_size(self.total_bytes or 0)} {_size(rate)}/s"
        self.bar.update(self.task, transfer=text)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@contextlib.contextmanager
def progress_reporter(
    progress: Union[bool, ProgressCallback, None],
    total: int,
    description: str = "spectra",
    total_bytes: Optional[int] = None,
) -> Iterator[Optional[ProgressCallback]]:
    """The callback to hand to a scan, for the ``progress`` argument of
    :func:`lora_rank.analyze`: the user's callable as is, a rich bar on stderr (``True``, or
    ``None`` in a terminal), or ``None`` (``False``, or ``None`` outside a terminal). With
    ``total_bytes`` (a remote scan), the bar's callback also has ``fetched(nbytes)`` and shows
    the bytes downloaded and their rate.

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
        TextColumn("{task.fields[transfer]}"),
        TextColumn("{task.fields[tensor]}", style="dim"),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=total, tensor="", transfer="")
    with bar:
        yield _BarUpdate(bar, task, total_bytes)
