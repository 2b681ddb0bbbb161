"""Where rayq's words go: one level for log lines and progress bars.

:func:`set_log_level` (or the environment variable ``RAYQ_LOG_LEVEL``, read when
rayq is imported) sets the level of the ``rayq`` logger, and progress bars follow
it: at ``INFO`` (the default) rayq shows bars in terminals and notebooks and log
lines elsewhere; at ``WARNING`` or above it shows neither, only warnings and errors.

rayq installs one handler on the ``rayq`` logger. It writes ``rayq: message`` to
standard error through ``tqdm.write``, so a log line never breaks a progress bar,
and rounds floats given as ``%s`` arguments to 4 significant digits. It stays
silent while the application configures logging itself (the root logger has
handlers): rayq's records then propagate there as usual, at rayq's level. In Ray
worker processes it writes only warnings and errors (the driver reports progress).

Inside a sweep every line names its model (``rayq: [digits_mixed] trial 3 ...``):
see :func:`log_context`.

Example:
    >>> import rayq
    >>> rayq.set_log_level("WARNING")   # quiet: no bars, no INFO lines
    >>> rayq.set_log_level("INFO")
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import os
import sys
from collections.abc import Iterator

LOGGER_NAME = "rayq"
ENV_VAR = "RAYQ_LOG_LEVEL"

_model: contextvars.ContextVar[str | None] = contextvars.ContextVar("rayq_log_model", default=None)


class _Short(float):
    """A float whose ``%s`` is 4 significant digits (``%.3f`` etc. are unchanged)."""

    def __str__(self) -> str:
        return f"{float(self):.4g}"

    __repr__ = __str__


def _short(value: object) -> object:
    return _Short(value) if type(value) is float else value  # exactly float: not bool/int/np types


class Formatter(logging.Formatter):
    """``rayq: [model] message`` (``-v``: with time, level and logger name); floats rounded."""

    def __init__(self, verbose: bool = False) -> None:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"
        super().__init__(fmt, datefmt="%H:%M:%S")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        record = copy.copy(record)  # other handlers see the record unchanged
        if isinstance(record.args, tuple):
            record.args = tuple(_short(a) for a in record.args)
        text = super().format(record)
        if self.verbose:
            return text
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return text if not level and text.startswith("rayq") else f"rayq: {level}{text}"

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        model = getattr(record, "rayq_model", None)
        if model:
            record.message = f"[{model}] {record.message}"
        return super().formatMessage(record)


class _ModelFilter(logging.Filter):
    """Stamps the sweep model of the current context on each record (``record.rayq_model``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "rayq_model"):
            record.rayq_model = _model.get()
        return True


class Handler(logging.Handler):
    """Writes to ``sys.stderr`` (looked up per line) through ``tqdm.write`` when bars exist."""

    def __init__(self) -> None:
        super().__init__()
        self.forced = False
        self.setFormatter(Formatter())
        self.addFilter(_ModelFilter())

    def emit(self, record: logging.LogRecord) -> None:
        if not self.forced and _root_configured():
            return
        if record.levelno < logging.WARNING and _in_ray_worker():  # the driver reports progress
            return
        try:
            write(self.format(record))
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


_worker = [False]


def _in_ray_worker() -> bool:
    """This process is a Ray worker (its output is forwarded to the driver's console)."""
    if _worker[0]:
        return True
    ray = sys.modules.get("ray")
    try:
        _worker[0] = bool(
            ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
        )
    except Exception:  # an unexpected Ray: treat as the driver
        return False
    return _worker[0]


def _root_configured() -> bool:
    return any(not isinstance(h, Handler) for h in logging.getLogger().handlers)


#: rayq progress bars now on screen (set by :mod:`rayq.api.progress`).
open_bars = [0]


def write(text: str, stream=None) -> None:
    """Print one line to ``stream`` (default stderr) without breaking rayq's progress bar.

    ``tqdm.write`` (clear the bar, print, redraw) only while a rayq bar is open: other
    libraries' idle tqdm objects must not turn every line into carriage-return
    sequences (a Jupyter stream drops what a ``\\r`` precedes).
    """
    stream = stream or sys.stderr
    tqdm_module = sys.modules.get("tqdm")
    if open_bars[0] and tqdm_module is not None:
        tqdm_module.tqdm.write(text, file=stream)
    else:
        stream.write(text + "\n")
        stream.flush()


#: The handler rayq installs on its logger (the CLI forces it on, with its own format).
HANDLER = Handler()


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def set_log_level(level: int | str) -> None:
    """Set the level of rayq's log lines and progress bars, in one place.

    Args:
        level: A :mod:`logging` level or its name (``"DEBUG"``, ``"INFO"``,
            ``"WARNING"``, ``"ERROR"``). At ``INFO`` and below rayq shows progress
            (bars in terminals and notebooks, log lines otherwise); above it, none.

    Raises:
        ConfigError: ``level`` is not a logging level.

    Example:
        >>> import logging, rayq
        >>> rayq.set_log_level(logging.WARNING)
        >>> logging.getLogger("rayq").level == logging.WARNING
        True
        >>> rayq.set_log_level("INFO")
    """
    logger().setLevel(parse_level(level))


def parse_level(level: int | str) -> int:
    """A logging level from an int or a name (case-insensitive)."""
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    value = logging.getLevelName(str(level).strip().upper())
    if not isinstance(value, int):
        from rayq.errors import ConfigError

        raise ConfigError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return value


def progress_enabled() -> bool:
    """Whether progress (bars or progress log lines) shows: rayq's level lets INFO through."""
    return logger().isEnabledFor(logging.INFO)


@contextlib.contextmanager
def log_context(model: str | None) -> Iterator[None]:
    """Name ``model`` in every rayq log line logged from this context (this thread).

    Example:
        >>> with log_context("digits_mixed"):
        ...     pass
    """
    token = _model.set(model)
    try:
        yield
    finally:
        _model.reset(token)


def current_model() -> str | None:
    """The model named by the innermost :func:`log_context`, or None."""
    return _model.get()


def in_kernel() -> bool:
    """Running in a Jupyter kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an unusual IPython: treat as a terminal
        return False


def _quiet_tqdm_auto() -> None:
    """In a kernel without ipywidgets, import ``tqdm.autonotebook`` once with its
    "IProgress not found" warning silenced: Ray and Optuna import ``tqdm.auto``, and
    rayq prints plain progress lines there instead (:mod:`rayq.api.progress`)."""
    if not in_kernel() or "tqdm.autonotebook" in sys.modules:
        return
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        return
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.autonotebook  # noqa: F401


def _install() -> None:
    log = logger()
    if HANDLER not in log.handlers:
        log.addHandler(HANDLER)
    if log.level == logging.NOTSET:
        env = os.environ.get(ENV_VAR)
        try:
            log.setLevel(parse_level(env) if env else logging.INFO)
        except Exception:  # a bad variable must not break ``import rayq``
            log.setLevel(logging.INFO)
            write(f"rayq: warning: ignoring {ENV_VAR}={env!r} (not a logging level)")
    try:
        _quiet_tqdm_auto()
    except Exception:  # tqdm's notebook support is optional
        pass


_install()

__all__ = [
    "ENV_VAR",
    "Formatter",
    "HANDLER",
    "Handler",
    "log_context",
    "parse_level",
    "progress_enabled",
    "set_log_level",
    "write",
]
