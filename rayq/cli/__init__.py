"""The ``rayq`` command line (``rayq.cli.main:main``), built for ``ray job submit``.

Each subcommand is a small module ``rayq.cli.<name>`` listed in
:data:`rayq.cli.main.SUBCOMMANDS`, providing:

- ``HELP``: a one-line description (shown by ``rayq --help``);
- ``DESCRIPTION``, ``EPILOG`` (optional): the text above and below ``rayq <name> --help``;
- ``add_arguments(parser)``: its flags (the global ``-v/-q/--debug`` are added for it);
- ``run(args) -> int``: the work; it raises :class:`rayq.RayqError` subclasses on failure
  and ``main`` turns them into one-line messages and exit codes.

Shared pieces (building the one frozen config from ``--config`` plus flags,
starting/stopping a local Ray) live in :mod:`rayq.cli.common`; outputs go through
:mod:`rayq.storage` (local paths and ``pyarrow.fs`` URIs alike, checked before any
work, published atomically); the FP32-vs-INT8 table and ``rayq report`` live in
:mod:`rayq.cli.report`.

Exit codes: 0 success; 2 bad input or usage (argparse errors, ``ConfigError``,
``DataError``, ``OutputError``, a model that cannot be read, missing or unwritable
files, an output folder in use by another run, an incomplete run given to ``report``); 1 any other
``RayqError`` (calibration, search, cluster, a failing validation function) or an
internal error; 130 interrupted.
"""
