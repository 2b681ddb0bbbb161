"""State that stays resident in a Ray worker process between tasks.

Calibration chunks and candidate evaluations run as plain Ray tasks on Ray's pooled
worker processes. What a task needs that is expensive to rebuild (a loaded model, an
instrumented session, an evaluator with its validation data) is loaded on a process's
first task of a call and kept here, keyed by the call's token, for that call's later
tasks on the same process. Entries are dropped when unused for their ``idle_s``, or
least recently used first beyond ``CAPACITY`` (concurrent searches of a sweep share
processes, so a process may hold a few calls at once), or when a later task names
them as ended (the driver's :func:`end`, sent along as :func:`ended`, applied
by the worker's :func:`release`).

Worker processes outlive calls, so the next call (the next model of a sweep, a
notebook's next search) starts on warm processes instead of spawning new ones.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

CAPACITY = 4  # most calls resident in one process


class _Entry:
    __slots__ = ("idle_s", "last_used", "value")

    def __init__(self, value: Any, idle_s: float) -> None:
        self.value, self.idle_s, self.last_used = value, idle_s, time.monotonic()


_ENTRIES: OrderedDict[str, _Entry] = OrderedDict()
_LOCK = threading.Lock()
_REAPER: list[threading.Thread] = []


def _reap() -> None:
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        with _LOCK:
            for token in [t for t, e in _ENTRIES.items() if now - e.last_used > e.idle_s]:
                del _ENTRIES[token]


def resident(token: str, load: Callable[[], Any], *, idle_s: float) -> Any:
    """This process's value for ``token``: ``load()`` on first use, then kept until it
    has been unused for ``idle_s`` seconds (or evicted by newer calls)."""
    with _LOCK:
        entry = _ENTRIES.get(token)
        if entry is None:
            entry = _ENTRIES[token] = _Entry(load(), idle_s)
            while len(_ENTRIES) > CAPACITY:
                _ENTRIES.popitem(last=False)
            if not _REAPER:
                _REAPER.append(threading.Thread(target=_reap, name="rayq-resident-reaper", daemon=True))
                _REAPER[0].start()
        _ENTRIES.move_to_end(token)
        entry.last_used = time.monotonic()
        return entry.value


def release(tokens) -> None:
    """Drop the entries of ``tokens`` (calls that ended; unknown tokens are ignored)."""
    with _LOCK:
        for token in tokens:
            _ENTRIES.pop(token, None)


def touch(token: str) -> None:
    """Mark ``token`` used now (after a long task, so its idle time starts at the end)."""
    with _LOCK:
        entry = _ENTRIES.get(token)
        if entry is not None:
            entry.last_used = time.monotonic()


def tokens() -> list[str]:
    """Tokens resident in this process, least recently used first (for tests)."""
    with _LOCK:
        return list(_ENTRIES)


# -- driver side: calls that ended, named to workers by later tasks ----------------------

_ENDED: deque[str] = deque(maxlen=32)
_ENDED_LOCK = threading.Lock()  # a sweep's searches end and submit from several threads


def end(token: str) -> None:
    """Record (in the driver) that call ``token`` is over: later tasks carry it in
    :func:`ended`, and the processes that run them drop its entry."""
    with _ENDED_LOCK:
        _ENDED.append(token)


def ended() -> tuple[str, ...]:
    """The driver's recently ended tokens, which tasks carry to workers for :func:`release`."""
    with _ENDED_LOCK:
        return tuple(_ENDED)
