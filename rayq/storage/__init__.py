"""Run outputs through ``pyarrow.fs``: local paths, ``file://`` and object stores alike.

- :mod:`rayq.storage.location` -- :func:`resolve` an output to a :class:`Location`,
  :func:`check_output` before any work.
- :mod:`rayq.storage.publish` -- :class:`Publication`: files staged, then renamed into
  place, the completion marker last; :func:`read_marker` refuses incomplete runs.
- :mod:`rayq.storage.lock` -- :class:`OutputLock`: one run per output folder.
"""

from rayq.storage.location import Location, check_output, copy_dir_to, download, local_dir_for, resolve, upload
from rayq.storage.lock import LOCK_NAME, Holder, OutputLock, check_free, holder_of
from rayq.storage.publish import Publication, read_marker

__all__ = [
    "Location",
    "resolve",
    "check_output",
    "copy_dir_to",
    "upload",
    "download",
    "local_dir_for",
    "Publication",
    "read_marker",
    "OutputLock",
    "Holder",
    "holder_of",
    "check_free",
    "LOCK_NAME",
]
