"""Structured progress events: one JSON line per phase start, step and end.

A search or sweep submitted with :func:`rayq.submit` runs with
``RAYQ_PROGRESS_EVENTS=1``; its progress reporter then also writes lines such as::

    rayq-progress: {"phase": "search", "state": "update", "n": 3, "total": 8, ...}

to stdout, which Ray keeps in the job's logs. :class:`rayq.api.submit.SearchJob` reads
them back (:meth:`~rayq.api.submit.SearchJob.events`, :meth:`~rayq.api.submit.SearchJob.watch`)
to draw progress bars in another process, e.g. a notebook. Plain JSON, never pickle.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

#: Marks an event line in a job's logs.
PREFIX = "rayq-progress: "
#: Set to ``1`` to write events (``rayq.submit`` sets it in the job's environment).
ENV_VAR = "RAYQ_PROGRESS_EVENTS"
#: Steps of one phase are written at most this often (starts and ends always).
MIN_INTERVAL_S = 1.0

_last: dict[tuple[str, str], float] = {}
_model: contextvars.ContextVar[str] = contextvars.ContextVar("rayq_events_model", default="")


@contextlib.contextmanager
def model(name: str) -> Iterator[None]:
    """Label the events written inside with ``model=name`` (a sweep's concurrent searches)."""
    token = _model.set(name)
    try:
        yield
    finally:
        _model.reset(token)


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "").lower() in ("1", "true", "on")


def emit(phase: str, state: str, **fields: Any) -> None:
    """Write one event line for ``phase`` (``state``: start, update, end or result)."""
    if not enabled():
        return
    now, key = time.monotonic(), (_model.get(), phase)
    final = state != "update" or (fields.get("total") and fields.get("n") == fields.get("total"))
    if not final and now - _last.get(key, 0.0) < MIN_INTERVAL_S:
        return
    _last[key] = now
    event = {"phase": phase, "state": state, "time": round(time.time(), 3), **fields}
    if key[0]:
        event["model"] = key[0]
    sys.stdout.write(PREFIX + json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def parse(line: str) -> dict | None:
    """The event of a log line, or None when the line is not one."""
    if not line.startswith(PREFIX):
        return None
    try:
        event = json.loads(line[len(PREFIX) :])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "phase" in event and "state" in event else None
