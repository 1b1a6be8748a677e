"""`modelport data convert`: data files between .npz and .mindrecord (modelport.data)."""

from __future__ import annotations

from typing import Annotated

import typer

from modelport.cli.output import console, emit_json, progress

data_app = typer.Typer(
    name="data",
    help="Data files: .npz and MindRecord (.mindrecord, MindSpore's dataset format, read and written in the "
         "`mindspore` toolchain).",
    no_args_is_help=True,
)


@data_app.command("convert")
def convert(
    src: Annotated[str, typer.Argument(help="The data file: .npz or .mindrecord (its .mindrecord.db beside it).")],
    out: Annotated[str, typer.Option("-o", "--out", help="The file to write: .mindrecord or .npz.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Convert SRC to OUT: an .npz's arrays become MindRecord rows (row i: index i of every array's axis 0) and back."""
    from modelport.data import convert_data

    with progress(not as_json, f"converting {src}"):
        report = convert_data(src, out)
    if as_json:
        emit_json(report)
        return
    fields = ", ".join(f"{n} {d}[{'x'.join(map(str, s)) or 'scalar'}]" for n, d, s in report.fields)
    console.print(f"wrote {report.out}: {report.rows} rows of {fields} ({report.seconds:.1f} s)", markup=False)
    for name, a, b in report.widened:
        console.print(f"note: {name} widened from {a} to {b} (MindRecord keeps int32, int64, float32, float64)",
                      markup=False)
    if report.skipped:
        console.print(f"note: bytes/string fields skipped: {', '.join(report.skipped)}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
