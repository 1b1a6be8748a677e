"""The `modelport` command: a thin Typer layer over the library; errors become exit codes."""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import typer

from modelport.cli import (
    adapt_cmd,
    bench_cmd,
    check_cmd,
    compress_cmd,
    convert_cmd,
    data_cmd,
    demo_cmd,
    distill_cmd,
    federate_cmd,
    inspect_cmd,
    registry_cmd,
    scan_cmd,
    scrub_cmd,
    sign_cmd,
    toolchain_cmd,
    verify_cmd,
)
from modelport.cli.output import err_console
from modelport.errors import ModelportError
from modelport.quiet import DEBUG_ENV

app = typer.Typer(
    name="modelport",
    help="Move trained models between frameworks and platforms, and prove they still do the same thing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from modelport.versions import tool_versions

        versions = tool_versions()
        typer.echo(f"modelport {versions.pop('modelport')}")
        for name, version in versions.items():
            typer.echo(f"  {name} {version}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print modelport's version and those of the frameworks it finds, then exit."),
) -> None:
    """Move trained models between frameworks and platforms, and prove they still do the same thing."""


for module in (convert_cmd, verify_cmd, inspect_cmd, bench_cmd, check_cmd, adapt_cmd, compress_cmd, distill_cmd, demo_cmd, federate_cmd,
               registry_cmd, sign_cmd, scrub_cmd, scan_cmd, toolchain_cmd, data_cmd):
    module.register(app)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _usage_hint(exc: Exception) -> str:
    """' (see `modelport CMD --help`)' for a usage error raised inside a known command."""
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "modelport"
    return f" (see `{path} --help`)" if getattr(exc, "exit_code", 1) == 2 else ""


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; exit 0 ok · 1 check failed · 2 bad input · 3 unsupported · 4 unsafe."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if debug:  # modelport.quiet lets framework output through
        os.environ[DEBUG_ENV] = "1"
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
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option or command, bad or missing value
        if exc.format_message().strip():  # (empty after no_args_is_help has printed the help)
            err_console.print(f"modelport: error: {_one_line(exc.format_message())}{_usage_hint(exc)}",
                              markup=False, soft_wrap=True)
        return exc.exit_code
    except typer.Abort:
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
