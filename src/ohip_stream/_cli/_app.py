"""``ohip-stream`` in-process: the commands, and what each kind of error prints and exits with.

Exit codes (the table in ``docs/reference/cli.md``): 0 done (SIGTERM included: a requested
stop); 1 a runtime error; 2 a configuration or usage error; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import traceback
from typing import Any

import typer

# The command modules register their commands on the application when imported.
from ohip_stream._cli import _bridge, _checkpoint, _commands, _emulator, _fleet  # noqa: F401
from ohip_stream._cli._common import (
    PROG,
    CliState,
    MissingExtraError,
    error_line,
    reset_logging,
    write_line,
)
from ohip_stream._cli._consume import ReaderGoneError
from ohip_stream._cli._errors import cli_message, os_error_message
from ohip_stream._cli._options import app
from ohip_stream._exceptions import ConfigurationError, OhipError
from ohip_stream._logging import redact

__all__ = ["EXIT_CONFIGURATION", "EXIT_ERROR", "EXIT_INTERRUPTED", "app", "run"]

EXIT_ERROR = 1
EXIT_CONFIGURATION = 2
EXIT_INTERRUPTED = 130


def _click_exceptions() -> Any:
    # Recent Typer releases vendor Click as typer._click; older ones use Click itself.
    for name in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    raise ImportError("neither typer._click nor click is importable")  # pragma: no cover


_cx = _click_exceptions()
_NO_ARGS: Any = getattr(_cx, "NoArgsIsHelpError", None)
_INTERRUPTS: tuple[type[BaseException], ...] = (
    *{typer.Abort, getattr(_cx, "Abort", typer.Abort)},
    KeyboardInterrupt,
)


def run(argv: list[str], prog: str = PROG) -> int:
    """Run the command line in-process; return the exit code."""
    CliState.verbose = 0
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except _cx.UsageError as exc:
        if _NO_ARGS is not None and isinstance(exc, _NO_ARGS) and exc.ctx is not None:
            # `ohip-stream` or `ohip-stream checkpoint` alone: the help.
            write_line(exc.ctx.get_help())
            return EXIT_CONFIGURATION
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _fail(f"{exc.format_message()}{hint}", EXIT_CONFIGURATION)
    except _INTERRUPTS:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _failed(exc)
    finally:
        reset_logging()
    return result if isinstance(result, int) else 0


def _failed(exc: Exception) -> int:
    """The line and the exit code of an error that ended a command (called while handling it,
    so that ``--verbose`` can show its traceback)."""
    if isinstance(exc, _cx.ClickException):
        return _fail(exc.format_message(), exc.exit_code)
    if isinstance(exc, MissingExtraError):
        sys.stderr.write(f"{exc}\n")
        return EXIT_CONFIGURATION
    if isinstance(exc, ConfigurationError):
        return _fail(cli_message(exc), EXIT_CONFIGURATION)
    if isinstance(exc, OhipError):
        return _fail(cli_message(exc), EXIT_ERROR)
    if isinstance(exc, (BrokenPipeError, ReaderGoneError)):
        _silence_stdout()
        return 0
    if isinstance(exc, OverflowError):  # a number too large for the system (a port, a count)
        return _fail(f"a value is out of range: {exc}", EXIT_CONFIGURATION)
    if isinstance(exc, OSError):  # a path given on the command line that the system refuses
        return _fail(os_error_message(exc), EXIT_CONFIGURATION)
    # A bug: say what it is in one line; --verbose shows where.
    return _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_ERROR)


def _fail(message: object, code: int) -> int:
    if CliState.verbose:
        sys.stderr.write(redact(traceback.format_exc()))
    sys.stderr.write(error_line(message) + "\n")
    sys.stderr.flush()
    return code


def _silence_stdout() -> None:
    # The reader went away (`| head`): further writes, at exit included, would fail again.
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
