"""rayq's error hierarchy.

Every error rayq raises on purpose derives from :class:`RayqError`; third-party
exceptions (onnx, onnxruntime, openvino, ray, optuna) are translated at the
boundary of the layer that calls them (``raise BackendError(...) from exc``),
so users catch one family and always get a message that names the problem.

- :class:`ConfigError` -- a config value, argument or ignored-scope rule is wrong.
- :class:`DataError` -- the calibration/validation data is empty, malformed,
  holds NaN/Inf, or does not match the model's inputs.
- :class:`BackendError` -- a model cannot be read, instrumented, built or run.
- :class:`CalibrationError` -- statistics collection failed.
- :class:`SearchError` -- the accuracy-control search cannot proceed.
- :class:`ClusterError` -- Ray cannot be reached or a worker died for good.
  :class:`JobTimeoutError` (also a ``TimeoutError``) -- a submitted job did not
  end within ``SearchJob.wait``'s timeout.
- :class:`OutputError` -- an output location cannot be used (unknown URI scheme,
  not writable, a file where a folder is expected, held by another run), or a run
  found there is incomplete.

Internal to a search or to the CLI (not re-exported by ``rayq``, but still ``RayqError``):

- :class:`ValidationFailed` -- the user's validation function raised or returned a
  non-finite metric; :class:`ValidationTimedOut` -- it did not return in time. A search
  records such a candidate as failed and goes on.
- :class:`InputError` -- bad input found by the CLI (unreadable model, unwritable output): exit code 2.
- :class:`UsageError` -- a command line that does not parse: exit code 2.
"""

from __future__ import annotations


class RayqError(Exception):
    """Base class of every error rayq raises on purpose."""


class ConfigError(RayqError, ValueError):
    """A configuration value, argument or ignored-scope rule is invalid."""


class DataError(RayqError, ValueError):
    """Calibration or validation data is empty, malformed, or does not fit the model."""


class BackendError(RayqError):
    """A model could not be read, instrumented, transformed, run or saved."""


class CalibrationError(RayqError):
    """Calibration statistics could not be collected or merged."""


class SearchError(RayqError):
    """The accuracy-control search could not proceed."""


class ClusterError(RayqError):
    """The Ray cluster is unreachable or a worker failed permanently."""


class JobTimeoutError(ClusterError, TimeoutError):
    """A submitted job did not end within the time given to
    :meth:`rayq.api.submit.SearchJob.wait`; the job goes on running."""


class OutputError(RayqError):
    """An output location is unusable or busy, or the run stored there is incomplete."""


class ValidationFailed(RayqError):
    """The user's validation function raised or returned a non-finite metric."""


class ValidationTimedOut(ValidationFailed):
    """The user's validation function did not return within the validation timeout."""


class InputError(RayqError):
    """Bad input detected by the CLI (unreadable model, unwritable output...): exit code 2."""


class UsageError(RayqError):
    """A command-line parsing error (argparse): exit code 2.

    Attributes:
        prog: The program (and subcommand) whose usage was wrong, for the ``--help`` hint.
    """

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


__all__ = [
    "RayqError",
    "ConfigError",
    "DataError",
    "BackendError",
    "CalibrationError",
    "SearchError",
    "ClusterError",
    "JobTimeoutError",
    "OutputError",
    "ValidationFailed",
    "ValidationTimedOut",
    "InputError",
    "UsageError",
]
