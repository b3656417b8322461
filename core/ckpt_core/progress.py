"""Progress of long work, reported in bytes written.

Writers call ``advance(n)`` as bytes reach the disk; it costs nothing when nobody listens.
The CLI wraps a conversion in ``bar(total)``, which shows a rich progress bar on stderr
when stderr is a terminal (and not ``--quiet``), and stays silent otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator

_listener: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar("ckpt_progress", default=None)


def advance(nbytes: int) -> None:
    """Report ``nbytes`` more bytes written."""
    listener = _listener.get()
    if listener is not None:
        listener(nbytes)


def listener() -> Callable[[int], None] | None:
    """The callback ``advance`` reports to here (None: nobody listens); ``pool`` hands it
    to the threads that write a checkpoint's files."""
    return _listener.get()


@contextlib.contextmanager
def listen(callback: Callable[[int], None]) -> Iterator[None]:
    """Send every ``advance`` inside the block to ``callback`` (for API users and tests)."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


@contextlib.contextmanager
def bar(total: int, description: str, enabled: bool = True) -> Iterator[None]:
    """A progress bar over ``total`` bytes on stderr, shown only on a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = (description, BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as shown:
        task = shown.add_task(description, total=total)
        with listen(lambda n: shown.advance(task, n)):
            yield
