"""One progress reporter for everything long: a bar in terminals and notebooks,
plain log lines elsewhere (Ray job logs, CI)."""

from __future__ import annotations

import logging
import os
import sys
import time

from rayq import events

log = logging.getLogger("rayq")


def _interactive() -> bool:
    if os.environ.get("RAYQ_PROGRESS", "").lower() in ("0", "off", "false", "log"):
        return False
    if os.environ.get("RAYQ_PROGRESS", "").lower() in ("1", "on", "true", "bar"):
        return True
    try:
        from IPython import get_ipython  # noqa: PLC0415

        if get_ipython() is not None and "IPKernelApp" in get_ipython().config:
            return True
    except Exception:  # IPython absent or not a kernel
        pass
    return sys.stderr.isatty()


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
        self._next_log = 0.0
        self._start = time.perf_counter()
        self._event("start")
        if _interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=f"rayq {desc}", unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._event("update")
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.total:
            frac = self.n / self.total
            if frac >= self._next_log or self.n == self.total:
                log.info("%s: %d/%d %s%s", self.desc, self.n, self.total, self.unit,
                         f" ({self.postfix})" if self.postfix else "")
                self._next_log = frac + 0.1

    def set_postfix(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        else:
            log.info("%s: %s", self.desc, text)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def close(self) -> None:
        self._event("end")
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _event(self, state: str) -> None:
        """A structured event for job clients (:mod:`rayq.events`; off unless enabled)."""
        if state == "end":  # close() may run twice
            if getattr(self, "_ended", False):
                return
            self._ended = True
        events.emit(self.desc, state, n=self.n, total=self.total, unit=self.unit, postfix=self.postfix,
                    elapsed=round(self.elapsed, 3))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
