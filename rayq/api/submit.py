"""Searches as Ray jobs, driven from a notebook: submit, watch, reattach, load the result.

A search run inside a notebook kernel (``rayq.search`` with a local Ray or Ray Client)
dies with the kernel. :func:`submit` hands the same ``rayq search`` / ``rayq sweep``
command to the cluster's job server instead (Ray's Jobs API); the kernel only polls.
:func:`attach` finds the job again from any process that knows its id.

The config travels as YAML text in the job's environment (never pickle); the job
writes it to ``rayq-job-<id>.yaml`` in its copy of ``working_dir`` and runs
``rayq <command> --config rayq-job-<id>.yaml``. ``working_dir`` (default: the current
directory) is zipped and uploaded by Ray, so the module named by ``validation_fn`` and
relative input paths are found there.

Example:
    >>> import rayq
    >>> job = rayq.submit("configs/search_digits.yaml", address="http://127.0.0.1:8265",
    ...                   output="/shared/runs/digits", n_trials=8)      # doctest: +SKIP
    >>> job.watch()                  # progress bars until the job ends  # doctest: +SKIP
    'SUCCEEDED'
    >>> job.result().plan.fallback                                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

from rayq import events
from rayq.api import config as rayq_config
from rayq.errors import ConfigError, JobTimeoutError, OutputError, SearchError

log = logging.getLogger(__name__)

#: Environment variable holding the job's config as YAML text.
CONFIG_ENV = "RAYQ_JOB_CONFIG"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_INPUTS = ("model", "calibration", "validation")
#: The file whose presence marks a finished run, per command.
RESULT_FILES = {"search": "result.json", "sweep": "summary.parquet"}
#: Tolerated clock difference between the cluster and the output's storage.
CLOCK_SLACK_S = 30.0


def submit(
    config: Any = None,
    /,
    *,
    address: str | None = None,
    working_dir: str | None = None,
    output: str | None = None,
    submission_id: str | None = None,
    excludes: list[str] | None = None,
    env_vars: dict[str, str] | None = None,
    **fields: Any,
) -> SearchJob:
    """Submit a search (or sweep) to a Ray cluster as a job; returns at once.

    Args:
        config: A :class:`~rayq.api.config.SearchConfig` / ``SweepConfig``, a YAML path
            (``configs/*.yaml``), a dict of search fields, or None (``fields`` only).
        address: The job server (dashboard) address, e.g. ``http://127.0.0.1:8265``;
            None: ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``.
        working_dir: Folder uploaded for the job (default: the current directory).
            Relative input paths and the ``validation_fn`` module are looked up in it.
            Ray honours ``.gitignore`` and ``.rayignore`` there; the upload is limited
            to 512 MiB zipped.
        output: Where the job writes its results; overrides the config's. A relative
            local path is made absolute against the current directory (it names a
            folder on the cluster's nodes: use a shared filesystem or an object-store
            URI to read results here).
        submission_id: The job id (default ``rayq-<command>-<time>-<random>``).
        excludes: More ``working_dir`` patterns not to upload (gitignore syntax).
        env_vars: Extra environment variables of the job.
        **fields: Config fields overriding ``config``'s (``n_trials=8``, ...).

    Returns:
        A :class:`SearchJob`.

    Raises:
        ConfigError: The config is invalid, has no output, or names files or a module
            missing from ``working_dir``.
        ClusterError: The job server cannot be reached (token auth: export
            ``RAY_AUTH_MODE=token``) or refused the job.

    Example:
        >>> job = rayq.submit(dict(model="examples/digits/digits_cnn.onnx",
        ...     calibration="examples/digits/calibration.npz", validation="examples/digits/validation.npz",
        ...     validation_fn="examples.digits.metric:accuracy"), output="s3://bucket/run",
        ...     address="http://127.0.0.1:8265")                          # doctest: +SKIP
    """
    from rayq.distributed.cluster import DEFAULT_EXCLUDES
    from rayq.distributed.jobs import JobApi

    cfg = job_config(config, fields, output)
    command = "search" if isinstance(cfg, rayq_config.SearchConfig) else "sweep"
    workdir = _working_dir(working_dir)
    if "://" not in workdir:
        _check_inputs(cfg, workdir)
    job_id = submission_id or f"rayq-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    if not _ID.match(job_id):
        raise ConfigError(f"submission_id={job_id!r} may hold only letters, digits, '_', '-' and '.'")
    runtime_env = {
        "working_dir": workdir,
        "env_vars": {**(env_vars or {}), CONFIG_ENV: rayq_config.dump(cfg), events.ENV_VAR: "1"},
    }
    if "://" not in workdir:  # a zip in an object store is taken as it is
        runtime_env["excludes"] = [*DEFAULT_EXCLUDES, *(excludes or [])]
    api = JobApi(address)
    api.submit(
        entrypoint=entrypoint(command, job_id),
        runtime_env=runtime_env,
        submission_id=job_id,
        metadata={"rayq.command": command, "rayq.output": cfg.output},
    )
    log.info("submitted %s job %s to %s (output %s)", command, job_id, api.address, cfg.output)
    return SearchJob(job_id, api, command=command, output=cfg.output)


def attach(job_id: str, *, address: str | None = None, output: str | None = None) -> SearchJob:
    """The :class:`SearchJob` of a job submitted earlier, from any process.

    Args:
        job_id: The id :func:`submit` returned (``job.job_id``).
        address: The job server address, as for :func:`submit`.
        output: Where the job writes its results (default: what :func:`submit` recorded).

    Raises:
        ClusterError: The job server is unreachable, or it knows no such job.

    Example:
        >>> job = rayq.attach("rayq-search-20260101-120000-a1b2c3", address="http://127.0.0.1:8265")  # doctest: +SKIP
        >>> job.status()                                                   # doctest: +SKIP
        'RUNNING'
    """
    from rayq.distributed.jobs import JobApi

    api = JobApi(address)
    meta = api.info(job_id)["metadata"]
    return SearchJob(job_id, api, command=meta.get("rayq.command", "search"), output=output or meta.get("rayq.output"))


def entrypoint(command: str, job_id: str) -> str:
    """The job's shell command: write the config from the environment, run the CLI on it."""
    name = f"rayq-job-{job_id}.yaml"
    return f"printf '%s\\n' \"${CONFIG_ENV}\" > {name} && rayq {command} --config {name}"


def job_config(config: Any, fields: dict[str, Any], output: str | None) -> Any:
    """The validated search/sweep config a job runs: ``config`` + ``fields`` + ``output``."""
    if isinstance(config, (rayq_config.SearchConfig, rayq_config.SweepConfig)):
        cfg = _replace(config, fields)
    elif isinstance(config, (str, os.PathLike)):
        cfg = rayq_config.load(os.fspath(config), overrides=fields)
    elif config is None or isinstance(config, dict):
        data = {**(config or {}), **fields}
        fn = data.get("validation_fn")
        if fn is not None and not isinstance(fn, str):
            raise ConfigError(
                "a job imports validation_fn on the cluster: give it as a 'package.module:function' "
                f"string importable from working_dir, not {type(fn).__name__}"
            )
        command = data.get("command") or ("sweep" if "models" in data else "search")
        cfg = rayq_config.from_dict(data, command=command)
    else:
        raise ConfigError(
            f"rayq.submit takes a SearchConfig, SweepConfig, YAML path or dict, not {type(config).__name__}"
        )
    if not isinstance(cfg, (rayq_config.SearchConfig, rayq_config.SweepConfig)):
        raise ConfigError(f"rayq.submit runs 'search' or 'sweep' configs, not {type(cfg).__name__}")
    out = output or cfg.output
    if not out:
        raise ConfigError("a job needs an output (output=... or the config's 'output'): the result is read from it")
    if "://" not in str(out):
        out = os.path.abspath(os.path.expanduser(os.fspath(out)))  # not inside Ray's working-dir copy
    return _replace(cfg, {"output": out, "address": None})  # the job joins its own cluster


def _replace(cfg: Any, changes: dict[str, Any]) -> Any:
    try:
        return dataclasses.replace(cfg, **changes)
    except TypeError as exc:
        raise ConfigError(f"unknown config field(s) {sorted(changes)}: {exc}") from exc


def _working_dir(working_dir: str | None) -> str:
    path = os.fspath(working_dir) if working_dir is not None else os.getcwd()
    if "://" in path:
        return path  # a zip in an object store: Ray downloads it
    if not os.path.isdir(path):
        raise ConfigError(f"working_dir={path!r} is not a folder")
    return os.path.abspath(path)


def _check_inputs(cfg: Any, workdir: str) -> None:
    """Relative inputs and the validation module must be in ``working_dir`` (or installed)."""
    if not isinstance(cfg, rayq_config.SearchConfig):
        return
    for key in _INPUTS:
        value = getattr(cfg, key)
        if "://" not in value and not os.path.isabs(value) and not os.path.exists(os.path.join(workdir, value)):
            raise ConfigError(
                f"{key}={value!r} does not exist in working_dir {workdir}: the job opens relative "
                "paths there (use a path relative to working_dir, an absolute path on the cluster "
                "nodes, or a URI)"
            )
    top = cfg.validation_fn.partition(":")[0].split(".")[0]
    if os.path.isdir(os.path.join(workdir, top)) or os.path.isfile(os.path.join(workdir, f"{top}.py")):
        return
    spec = importlib.util.find_spec(top)
    if spec is None:
        from rayq.distributed.cluster import MISSING_MODULE_HINT

        raise ConfigError(
            f"validation_fn={cfg.validation_fn!r}: module {top!r} is neither in working_dir "
            f"{workdir} nor installed here. {MISSING_MODULE_HINT}"
        )
    where = spec.origin or next(iter(spec.submodule_search_locations or []), "?")
    log.warning(
        "validation_fn module %r is not in working_dir %s (found here at %s): the job can import it only "
        "if it is installed on the cluster's nodes",
        top,
        workdir,
        where,
    )


class SearchJob:
    """A search or sweep running as a Ray job (made by :func:`submit` or :func:`attach`).

    Attributes:
        job_id: The submission id; :func:`attach` takes it.
        command: ``search`` or ``sweep``.
        output: Where the job writes its results.
    """

    def __init__(self, job_id: str, api: Any, *, command: str = "search", output: str | None = None) -> None:
        self.job_id, self.command, self.output = job_id, command, output
        self._api = api

    @property
    def address(self) -> str:
        """The job server's address."""
        return self._api.address

    def status(self) -> str:
        """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``.

        A search that met the budget but found no significant speed-up exits with
        code 3, so its job is ``FAILED`` and :meth:`result` still returns its result.
        """
        return self._api.status(self.job_id)

    def info(self) -> dict[str, Any]:
        """Entrypoint, metadata, Ray's status message, start and end times (ms)."""
        return self._api.info(self.job_id)

    def logs(self, follow: bool = False, *, tail: int | None = None, poll: float = 1.0) -> str | Iterator[str]:
        """The job's output so far (a string; its last ``tail`` lines when given), or with
        ``follow=True`` an iterator of lines that ends when the job has ended.

        Example:
            >>> for line in job.logs(follow=True):                      # doctest: +SKIP
            ...     print(line)
        """
        if follow:
            return self._follow(poll)
        text = self._api.logs(self.job_id)
        return text if tail is None else "\n".join(text.splitlines()[-tail:])

    def _follow(self, poll: float) -> Iterator[str]:
        seen, partial = 0, ""
        while True:
            ended = self.status() in TERMINAL  # read before the logs, so the last read is complete
            text = self._api.logs(self.job_id)
            partial += text[seen:]
            seen = len(text)
            *lines, partial = partial.split("\n")
            yield from lines
            if ended:
                if partial:
                    yield partial
                return
            time.sleep(poll)

    def events(self, *, poll: float = 1.0) -> Iterator[dict]:
        """The job's structured progress events (:mod:`rayq.events`) until it ends: dicts
        with ``phase``, ``state`` (start/update/end/result), ``n``, ``total``, ``postfix``
        and, in a sweep, ``model``."""
        for line in self._follow(poll):
            event = events.parse(line)
            if event is not None:
                yield event

    def watch(self, *, poll: float = 1.0) -> str:
        """Show the job's progress until it ends (one bar per phase in a notebook or
        terminal, log lines elsewhere); returns the final status, and logs the job's
        last lines when it did not succeed. Interrupting it leaves the job running."""
        from rayq.api.progress import Progress

        bars: dict[str, Progress] = {}
        try:
            for event in self.events(poll=poll):
                _show(bars, event, Progress)
        finally:
            for bar in bars.values():
                bar.close()
        status = self.status()
        if status != "SUCCEEDED":  # exit code 3 (within budget, not faster) is FAILED too
            log.warning("job %s ended %s; last log lines:\n%s", self.job_id, status, self.logs(tail=10))
        return status

    def wait(self, timeout: float | None = None, *, poll: float = 1.0) -> str:
        """Block until the job ends; returns its final status.

        Raises:
            JobTimeoutError: It is still running after ``timeout`` seconds (it goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if status in TERMINAL:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {self.job_id} is still {status} after {timeout}s")
            time.sleep(poll)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job, then load its result from :attr:`output`: a
        :class:`~rayq.SearchResult` for a search, the summary table (pandas) for a sweep.

        Raises:
            SearchError: The job ended without a result (the message has its last log lines).
            JobTimeoutError: It did not end within ``timeout`` seconds.
        """
        status = self.wait(timeout)
        if not self.output:
            raise SearchError(f"job {self.job_id} ({status}): its output is unknown; attach(..., output=URI)")
        if status != "SUCCEEDED":  # exit code 3 still has a result: this job's, not an older run's
            self._check_fresh(status, self.output)
        try:
            return _load(self.command, self.output)
        except (OutputError, OSError) as exc:  # OSError: a file of the run missing
            where = (
                ""
                if "://" in self.output
                else (
                    " A local output path names a folder on the cluster's nodes: use a shared filesystem or an "
                    "object-store URI to read results from here."
                )
            )
            raise SearchError(
                f"job {self.job_id} ended {status} without a readable result at {self.output}: "
                f"{exc}.{where} Last log lines:\n{self.logs(tail=15)}"
            ) from exc

    def _check_fresh(self, status: str, output: str) -> None:
        started = (self.info().get("start_time") or 0) / 1000
        written = _written_at(output, RESULT_FILES[self.command])
        if started and written is not None and written < started - CLOCK_SLACK_S:
            raise SearchError(
                f"job {self.job_id} ended {status}; the result at {output} was written "
                f"{started - written:.0f}s before the job started, by an earlier run. Last log "
                f"lines:\n{self.logs(tail=15)}"
            )

    def stop(self) -> bool:
        """Ask Ray to stop the job; False when it had already ended."""
        return self._api.stop(self.job_id)

    def __repr__(self) -> str:
        return f"SearchJob({self.job_id!r}, command={self.command!r}, output={self.output!r}, address={self.address!r})"


def _show(bars: dict, event: dict, progress_cls: type) -> None:
    """Apply one progress event to the bars, one per (model, phase)."""
    phase, state, model = str(event["phase"]), event["state"], event.get("model", "")
    desc = f"{model}: {phase}" if model else phase
    if state == "result":
        log.info(
            "%s: %s",
            desc,
            ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("phase", "state", "model", "time")),
        )
        return
    bar = bars.get(desc)
    if bar is None or state == "start":
        if bar is not None:
            bar.close()
        bar = bars[desc] = progress_cls(desc, total=event.get("total"), unit=event.get("unit") or "step")
    n = int(event.get("n") or 0)
    if n > bar.n:
        bar.update(n - bar.n)
    if event.get("postfix") and event["postfix"] != bar.postfix:
        bar.set_postfix(event["postfix"])
    if state == "end":
        bars.pop(desc).close()


def _written_at(output: str, name: str) -> float | None:
    """When ``output``/``name`` was last written (epoch seconds), None if unknown."""
    from rayq.storage import resolve

    try:
        location = resolve(output).child(name)
        info = location.fs.get_file_info(location.path)
    except Exception:  # unreachable: _load reports it
        return None
    return info.mtime.timestamp() if info.mtime is not None else None


def _load(command: str, output: str) -> Any:
    if command == "search":
        from rayq.tuning.result import SearchResult

        return SearchResult.load(output)
    import pandas as pd

    from rayq.storage import resolve

    try:
        data = resolve(output).child("summary.parquet").read_bytes()
    except (OSError, FileNotFoundError) as exc:
        raise OutputError(f"no sweep summary at {output}: {exc}") from exc
    return pd.read_parquet(io.BytesIO(data))
