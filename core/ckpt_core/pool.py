"""Parallel file work: the files of one write, made by a small pool of threads at once.

A writer that makes several files (shards, ranks) hands them to ``run``, one job (a
callable with no arguments) per file, and gets the jobs' results back in job order::

    results = pool.run([functools.partial(write_file, directory / name, group) for ...])

``--workers N`` (``api.save`` / ``api.convert``'s ``workers``, set for the write with
``workers(n)``) says how many run at once; 1 runs them here, one after the other, in
order, as writers did before the pool. Threads suffice: copying (``copy_file_range``),
reading, writing, fsync and CRC-32 all release the GIL, so N jobs keep N cores and the
disk's queue busy.

What does not change with N:

- atomicity: jobs write inside the writer's temporary directory, renamed into place after
  ``run`` returns; a failed job leaves nothing behind;
- the bytes: each file's bytes depend on its job alone, and results come back in job
  order, so indexes and manifests built from them are the same;
- progress: each job runs in a copy of the caller's context, so its ``progress.advance``
  reaches the caller's bar (and listeners).

A job that fails stops the others: jobs not started never start, running ones stop at
their next ``progress.advance`` (every writer reports each chunk it writes), and ``run``
raises the first failure once no job is running any more, so no thread writes after the
temporary directory is removed. Ctrl-C does the same. A job that calls ``run`` itself runs
those jobs in order (no pool inside a pool).

Memory: a running job holds what one file's writer holds (one tensor, or a chunk of a file
range), so N workers hold up to N times that.

Plugins adopt it the same way, with no change to a hook's signature or an option:

- dcp: plan first (every value's rank and key), then one job per rank that writes its
  ``__R_N.distcp`` file in plan order and returns each item's offset and length;
  ``.metadata`` is built from them and written after ``run`` returns;
- deepspeed: one job per rank, ``functools.partial(save_rank, rank)``, where ``save_rank``
  builds that rank's optimizer state and writes it with ``torchfile.save`` (so a worker
  holds one rank's state), and one for ``mp_rank_00_model_states.pt``; ``latest`` after
  ``run`` returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from . import progress

T = TypeVar("T")

# Measured (bench/bench_formats.py, the sharded rows): on this 2-core machine with one
# virtual disk, 2 workers write a multi-shard checkpoint faster than 1, and more threads
# than cores only add switching; a machine with more cores and disks gains up to 4.
DEFAULT = max(1, min(4, os.cpu_count() or 1))
MAX = 64  # more threads than any machine's disks reward

_workers: contextvars.ContextVar[int] = contextvars.ContextVar("ckpt_workers", default=DEFAULT)
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("ckpt_pool_job", default=False)


class Stopped(Exception):
    """Raised inside a job at its next ``progress.advance`` once another job has failed."""


@contextlib.contextmanager
def workers(n: int | None) -> Iterator[None]:
    """Run the writes inside the block with ``n`` workers (None: the default)."""
    token = _workers.set(DEFAULT if n is None else n)
    try:
        yield
    finally:
        _workers.reset(token)


def run(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Each job's result, in job order; the jobs run on up to ``workers`` threads at once.
    The first failure is raised after every job has stopped."""
    n = min(_workers.get(), len(jobs))
    if n <= 1 or _inside.get():
        return [job() for job in jobs]
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait  # (imports logging: writers only)

    stop = threading.Event()
    forward = _serialised(progress.listener())
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="ckpt-write") as executor:
        futures = [executor.submit(contextvars.copy_context().run, _job, job, stop, forward) for job in jobs]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # a failure, or Ctrl-C here: stop the rest; leaving the block waits for the running ones
            if not all(f.done() and f.exception() is None for f in futures):
                stop.set()
                for f in futures:
                    f.cancel()
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
    first = next((e for e in errors if not isinstance(e, Stopped)), errors[0] if errors else None)
    if first is not None:
        raise first
    return [f.result() for f in futures]


def _serialised(callback: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """``callback`` called by one thread at a time (a listener may add to a plain counter)."""
    if callback is None:
        return None
    lock = threading.Lock()

    def call(nbytes: int) -> None:
        with lock:
            callback(nbytes)

    return call


def _job(job: Callable[[], T], stop: threading.Event, forward: Callable[[int], None] | None) -> T:
    """Run one job, its progress forwarded to the caller's listener, stopped once ``stop`` is set."""
    def listener(nbytes: int) -> None:
        if stop.is_set():
            raise Stopped("stopped: another file of this write failed")
        if forward is not None:
            forward(nbytes)

    if stop.is_set():
        raise Stopped("stopped: another file of this write failed")
    _inside.set(True)
    try:
        with progress.listen(listener):
            return job()
    except BaseException:
        stop.set()  # at once: a worker freed by this failure must not start the next job
        raise
