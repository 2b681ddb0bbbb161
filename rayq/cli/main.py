"""``rayq`` entry point: global options, subcommand registry, errors and exit codes.

``main(argv)`` returns the exit code instead of exiting, so tests and notebooks can
call it in-process; the console script and ``python -m rayq.cli.main`` exit with it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

import rayq
from rayq.errors import ConfigError, DataError, InputError, OutputError, UsageError

#: Subcommand modules ``rayq.cli.<name>`` (see :mod:`rayq.cli`); a listed module that
#: does not exist yet is skipped, so owners add a subcommand by adding its module.
SUBCOMMANDS = ("quantize", "search", "sweep", "report")

USAGE_EXIT = 2
ERROR_EXIT = 1
INTERRUPT_EXIT = 130
#: Errors caused by the user's input: exit code 2. Every other error: exit code 1.
INPUT_ERRORS = (
    ConfigError,
    DataError,
    InputError,
    OutputError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump; main() returns 2
        raise UsageError(message, self.prog)


def _add_global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the defaults are suppressed so `rayq -v quantize` and
    # `rayq quantize -v` both work without one clobbering the other.
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("global options")
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=d(False),
        help="debug logs (rayq logger) with timestamps on stderr",
    )
    g.add_argument(
        "-q", "--quiet", action="store_true", default=d(False), help="only warnings and errors on stderr (no progress)"
    )
    g.add_argument("--debug", action="store_true", default=d(False), help="show full tracebacks on errors")


def _subcommand_modules() -> list:
    modules = []
    for name in SUBCOMMANDS:
        qualified = f"rayq.cli.{name}"
        try:
            modules.append((name, importlib.import_module(qualified)))
        except ModuleNotFoundError as exc:
            if exc.name != qualified:
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    """The ``rayq`` parser with every available subcommand."""
    parser = _Parser(
        prog="rayq",
        description="Distributed post-training INT8 quantization on Ray (ONNX and OpenVINO, NNCF-compatible).",
        epilog="Start with: rayq quantize --config configs/digits.yaml  (see configs/README.md)",
    )
    parser.add_argument("--version", action="version", version=f"rayq {rayq.__version__}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, module in _subcommand_modules():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        _add_global_options(p, top=False)
        p.set_defaults(_run=module.run, _command=name)
    return parser


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, rayq.RayqError):
        return _one_line(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename!r}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"internal error {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)"


def exit_code(exc: BaseException) -> int:
    """2 for bad input, 130 for an interrupt, 1 for everything else."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPT_EXIT
    return USAGE_EXIT if isinstance(exc, INPUT_ERRORS) else ERROR_EXIT


def _setup_logging(verbose: bool, quiet: bool) -> Callable[[], None]:
    """INFO (progress, summaries) by default, DEBUG with -v, WARNING with -q; undone by the returned call.

    Lines go through rayq's own handler (:mod:`rayq.logs`: through ``tqdm.write``, so
    they never break a progress bar), which the CLI forces on with its format.
    """
    from rayq import logs

    logger = logging.getLogger("rayq")
    saved = (logger.level, logger.propagate, logs.HANDLER.formatter, logs.HANDLER.forced)
    logs.HANDLER.setFormatter(logs.Formatter(verbose))
    logs.HANDLER.forced = True
    if logs.HANDLER not in logger.handlers:
        logger.addHandler(logs.HANDLER)
    if verbose:
        logger.setLevel(logging.DEBUG)
    elif quiet:
        logger.setLevel(logging.WARNING)
    elif not os.environ.get(logs.ENV_VAR):
        logger.setLevel(logging.INFO)
    logger.propagate = False

    def restore() -> None:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logs.HANDLER.setFormatter(saved[2])
        logs.HANDLER.forced = saved[3]

    return restore


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rayq`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Example:
        >>> main(["quantize", "--config", "configs/digits.yaml", "--num-workers", "1"])  # doctest: +SKIP
        0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except UsageError as exc:
        hint = f" (see '{exc.prog} --help')"
        print(f"rayq: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return USAGE_EXIT
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else USAGE_EXIT)
    if not hasattr(args, "_run"):
        parser.print_usage(sys.stderr)
        print("rayq: error: give a command (see 'rayq --help')", file=sys.stderr)
        return USAGE_EXIT
    restore = _setup_logging(args.verbose, args.quiet)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("rayq: interrupted", file=sys.stderr)
        return INTERRUPT_EXIT
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"rayq: error: {_describe(exc)}", file=sys.stderr, flush=True)
        return exit_code(exc)
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
