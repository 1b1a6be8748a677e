"""The `modelport` command: a thin Typer layer over the library; errors become exit codes."""

from __future__ import annotations

import sys
import traceback
import warnings

import click
import typer

from modelport.cli import (
    adapt_cmd,
    bench_cmd,
    check_cmd,
    compress_cmd,
    convert_cmd,
    demo_cmd,
    distill_cmd,
    inspect_cmd,
    verify_cmd,
)
from modelport.cli.common import err_console
from modelport.errors import ModelportError

app = typer.Typer(
    name="modelport",
    help="Move trained models between frameworks and platforms, and prove they still do the same thing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (convert_cmd, verify_cmd, inspect_cmd, bench_cmd, check_cmd, adapt_cmd, compress_cmd, distill_cmd, demo_cmd):
    module.register(app)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; exit 0 ok · 1 check failed · 2 bad input · 3 unsupported · 4 unsafe."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not debug:  # frameworks' deprecation chatter is not the user's business; --debug shows it
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
    try:
        rc = app(args=args, prog_name="modelport", standalone_mode=False)
    except ModelportError as exc:
        if debug:
            traceback.print_exc()
        err_console.print(f"modelport: error: {_one_line(str(exc))}", markup=False, soft_wrap=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("modelport: aborted", markup=False)
        return 130
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        err_console.print(
            f"modelport: error: internal error: {type(exc).__name__}: {_one_line(str(exc))[:400]} (rerun with --debug for the traceback)",
            markup=False, soft_wrap=True,
        )
        return 2
    return rc if isinstance(rc, int) else 0


def run() -> None:
    sys.exit(main())
