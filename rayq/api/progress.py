"""One progress reporter for everything long: a bar in terminals and notebooks,
plain log lines elsewhere (Ray job logs, CI, notebooks without ``ipywidgets``).

Bars follow the ``rayq`` logger's level (:func:`rayq.set_log_level`): none above
``INFO``. Log lines go through ``tqdm.write`` (:mod:`rayq.logs`), so they never
break a bar; one bar shows at a time (a phase started while another bar is open,
such as a search inside a sweep, reports in log lines), and a closed bar leaves
one summary line. ``RAYQ_PROGRESS=off|bar`` forces log lines or a bar.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time

from rayq import events, logs

log = logging.getLogger("rayq")

_open_bars = 0
_lock = threading.Lock()
_hinted = [False]


def _interactive() -> bool:
    if os.environ.get("RAYQ_PROGRESS", "").lower() in ("0", "off", "false", "log"):
        return False
    if os.environ.get("RAYQ_PROGRESS", "").lower() in ("1", "on", "true", "bar"):
        return True
    if _in_kernel():
        return True
    return sys.stderr.isatty()


def _in_kernel() -> bool:
    return logs.in_kernel()


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _bar_class():
    """tqdm's notebook widget in a kernel with ipywidgets, its text bar in terminals, else None.

    ``tqdm.auto`` without ipywidgets warns "IProgress not found" and prints every
    refresh as a separate text chunk; a kernel without ipywidgets gets log lines
    instead (and one hint naming the ``rayq[notebook]`` extra).
    """
    if _in_kernel() and os.environ.get("RAYQ_PROGRESS", "").lower() not in ("1", "on", "true", "bar"):
        if not _has_widgets():
            if not _hinted[0]:
                _hinted[0] = True
                log.info("progress as text: pip install 'rayq[notebook]' (ipywidgets) for progress bars")
            return None
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    from tqdm import tqdm

    return tqdm


class Progress:
    """Counts work units; renders a tqdm bar when interactive, else logs every ~10%.

    Example:
        >>> with Progress("calibration", total=4) as p:
        ...     for _ in range(4):
        ...         p.update(1)
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "batch") -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.n = 0
        self.postfix = ""
        self._bar = None
        self._redirect = contextlib.ExitStack()
        self._next_log = 0.0
        self._start = time.perf_counter()
        self._event("start")
        self._enabled = logs.progress_enabled()
        self._step = 0.25 if _open_bars else 0.1  # a phase under another bar (a sweep's search): fewer lines
        if self._enabled and _interactive():
            self._open_bar()

    def _open_bar(self) -> None:
        global _open_bars
        with _lock:
            if _open_bars:  # one bar at a time: a nested phase reports in log lines
                return
            bar_class = _bar_class()
            if bar_class is None:
                return
            _open_bars += 1
            logs.open_bars[0] += 1
        model = logs.current_model()
        desc = f"rayq [{model}] {self.desc}" if model else f"rayq {self.desc}"
        self._bar = bar_class(
            total=self.total, desc=desc, unit=self.unit, leave=False, dynamic_ncols=True, file=sys.stderr
        )
        if logs._root_configured():  # the application's console handlers write through tqdm too
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger()]))

    def update(self, n: int = 1) -> None:
        self.n += n
        self._event("update")
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.total and self._enabled:
            frac = self.n / self.total
            if frac >= self._next_log or self.n == self.total:
                log.info(
                    "%s: %d/%d %s%s",
                    self.desc,
                    self.n,
                    self.total,
                    self.unit,
                    f" ({self.postfix})" if self.postfix else "",
                )
                self._next_log = frac + self._step

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        else:  # the next milestone line shows it; every one only with -v
            log.debug("%s: %s", self.desc, text)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def close(self) -> None:
        global _open_bars
        self._event("end")
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._redirect.close()
            with _lock:
                _open_bars -= 1
                logs.open_bars[0] -= 1
            total = f"/{self.total}" if self.total else ""
            log.info(
                "%s: %d%s %s in %.1f s%s",
                self.desc,
                self.n,
                total,
                self.unit,
                self.elapsed,
                f" ({self.postfix})" if self.postfix else "",
            )

    def _event(self, state: str) -> None:
        """A structured event for job clients (:mod:`rayq.events`; off unless enabled)."""
        if state == "end":  # close() may run twice
            if getattr(self, "_ended", False):
                return
            self._ended = True
        events.emit(
            self.desc,
            state,
            n=self.n,
            total=self.total,
            unit=self.unit,
            postfix=self.postfix,
            elapsed=round(self.elapsed, 3),
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
