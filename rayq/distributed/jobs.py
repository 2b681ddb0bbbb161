"""The Ray Jobs SDK behind :mod:`rayq.api.submit`: submit, poll, read logs, stop.

Every call goes through :class:`JobApi`, which turns the SDK's errors
(``ConnectionError``, ``RuntimeError`` from HTTP failures, authentication errors,
working-dir upload errors) into :class:`rayq.ClusterError` with a message that says
what to do. Token authentication stays on: the SDK sends the cluster token only
when ``RAY_AUTH_MODE=token`` is set in this process's environment.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rayq.distributed.cluster import MISSING_MODULE_HINT
from rayq.errors import ClusterError

#: After ``ray start`` the job agent needs a few seconds before it accepts jobs.
AGENT_WAIT_S = 60.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _is_auth_error(text: str) -> bool:
    low = text.lower()
    return "401" in text or "unauthorized" in low or "authentication" in low


def _hint(text: str) -> str:
    low = text.lower()
    if "no module named" in low:
        return " " + MISSING_MODULE_HINT
    if "size" in low and ("exceed" in low or "too large" in low or "limit" in low):
        return (
            " The working_dir package is too large (Ray's limit is 512 MiB, zipped): list large files and "
            "folders in excludes=[...] or a .rayignore file in working_dir."
        )
    return ""


def cluster_error(what: str, exc: BaseException) -> ClusterError:
    """A :class:`ClusterError` for a failed Jobs-API call, with what to do when known."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if _is_auth_error(text):
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        return ClusterError(
            f"{what}: the job server refused this client ({text.splitlines()[0]}). The cluster uses token "
            f"authentication (RAY_AUTH_MODE here: {mode}): export RAY_AUTH_MODE=token before Ray is first used "
            "in this process, with the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
            "~/.ray/auth_token (`ray get-auth-token` on the head prints it)."
        )
    return ClusterError(f"{what}: {' '.join(text.split())}.{_hint(text)}")


class JobApi:
    """A connection to a cluster's job server (the dashboard address, ``http://host:8265``).

    Args:
        address: Job server address; None: ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``.
    """

    def __init__(self, address: str | None) -> None:
        from ray.job_submission import JobSubmissionClient

        try:
            self._client = JobSubmissionClient(address)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError (bad address)
            where = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
            raise cluster_error(
                f"cannot connect to the Ray job server at {where!r} (the dashboard address, "
                "e.g. http://127.0.0.1:8265)",
                exc,
            ) from exc
        self.address = self._client.get_address()

    def submit(
        self,
        *,
        entrypoint: str,
        runtime_env: dict,
        submission_id: str,
        metadata: dict[str, str],
        agent_wait_s: float = AGENT_WAIT_S,
    ) -> str:
        """Submit a job (uploads ``runtime_env['working_dir']``); returns its submission id."""
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                return self._client.submit_job(
                    entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id, metadata=metadata
                )
            except Exception as exc:
                if "No available agent" in str(exc) and time.monotonic() < deadline:
                    time.sleep(2.0)
                    continue
                raise cluster_error(f"cannot submit job {submission_id!r} to {self.address}", exc) from exc

    def status(self, job_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        try:
            status = self._client.get_job_status(job_id)
        except Exception as exc:
            raise cluster_error(f"cannot read the status of job {job_id!r} at {self.address}", exc) from exc
        return str(getattr(status, "value", status))

    def info(self, job_id: str) -> dict[str, Any]:
        """The job's entrypoint, metadata, message and times."""
        try:
            info = self._client.get_job_info(job_id)
        except Exception as exc:
            raise cluster_error(f"cannot read job {job_id!r} at {self.address}", exc) from exc
        return {
            "entrypoint": info.entrypoint,
            "metadata": dict(info.metadata or {}),
            "message": info.message,
            "status": str(getattr(info.status, "value", info.status)),
            "start_time": info.start_time,
            "end_time": info.end_time,
        }

    def logs(self, job_id: str) -> str:
        """Everything the job's entrypoint wrote so far (stdout and stderr)."""
        try:
            return self._client.get_job_logs(job_id)
        except Exception as exc:
            raise cluster_error(f"cannot read the logs of job {job_id!r} at {self.address}", exc) from exc

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; False when it had already ended."""
        try:
            return bool(self._client.stop_job(job_id))
        except Exception as exc:
            raise cluster_error(f"cannot stop job {job_id!r} at {self.address}", exc) from exc
