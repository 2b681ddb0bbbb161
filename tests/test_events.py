"""Structured progress events: written only when enabled, throttled, parsed back."""

from __future__ import annotations

import json

from rayq import events
from rayq.api.progress import Progress


def _lines(capsys) -> list[dict]:
    return [events.parse(line) for line in capsys.readouterr().out.splitlines()]


def test_progress_writes_no_events_unless_enabled(monkeypatch, capsys):
    monkeypatch.delenv(events.ENV_VAR, raising=False)
    with Progress("calibration", total=2) as bar:
        bar.update(2)
    assert events.PREFIX not in capsys.readouterr().out


def test_progress_writes_start_throttled_updates_and_one_end(monkeypatch, capsys):
    monkeypatch.setenv(events.ENV_VAR, "1")
    monkeypatch.setenv("RAYQ_PROGRESS", "log")
    monkeypatch.setattr(events, "_last", {})
    with Progress("search", total=3, unit="trial") as bar:
        bar.update(1)  # within MIN_INTERVAL_S of the start: dropped
        bar.update(1)  # likewise
        bar.set_postfix("trial 2: ok")
        bar.update(1)  # the last step is always written
        bar.close()  # a second close (the with block's) writes no second end
    seen = _lines(capsys)
    assert [(e["state"], e["n"]) for e in seen] == [("start", 0), ("update", 3), ("end", 3)]
    assert all(e["phase"] == "search" and e["total"] == 3 and e["unit"] == "trial" for e in seen)
    assert seen[-1]["postfix"] == "trial 2: ok" and seen[-1]["elapsed"] >= 0
    with events.model("digits"), Progress("search", total=3, unit="trial") as bar:
        events._last[("digits", "search")] -= events.MIN_INTERVAL_S  # a second later: written again
        bar.update(1)
    labelled = _lines(capsys)
    assert [(e["state"], e["n"]) for e in labelled] == [("start", 0), ("update", 1), ("end", 1)]
    assert {e["model"] for e in labelled} == {"digits"}  # a sweep's searches are told apart


def test_parse_takes_only_whole_event_lines():
    line = events.PREFIX + json.dumps({"phase": "search", "state": "end", "n": 2})
    assert events.parse(line) == {"phase": "search", "state": "end", "n": 2}
    assert events.parse("(worker pid=1) " + line) is None  # a forwarded worker line is not ours
    assert events.parse(events.PREFIX + "{not json") is None
    assert events.parse(events.PREFIX + '{"phase": "x"}') is None  # no state
    assert events.parse("rayq: search: 1/2 trial") is None
