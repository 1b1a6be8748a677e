"""`modelport keygen`, `sign`, `signature verify`, `provenance verify`; the --sign / --require-signature options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json
from modelport.security.gate import ENV_VAR

SignOpt = Annotated[Optional[str], typer.Option(
    "--sign", metavar="KEY",
    help="Sign this step's provenance (in-toto/SLSA) with this private key (PEM); written beside the output as OUT.intoto.jsonl.")]
RequireSignatureOpt = Annotated[Optional[str], typer.Option(
    "--require-signature", metavar="PUB", envvar=ENV_VAR, show_envvar=True,
    help="Refuse (exit 4) any model not signed by this public key, checked before anything parses it.")]

_NOT_OPTIONS = {"sign", "require_signature", "as_json", "registry"}  # keys, flags, URLs that may hold credentials


_SNAPSHOTS = "modelport.verified_snapshots"


def _current_context():
    """The running command's context (typer vendors click as ``typer._click``), or None."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - another typer: the snapshot is then removed at exit
        return None
    return get_current_context(silent=True)


def require_signed(public_key: str | None, *models: str | list[str] | None) -> tuple[Any, ...]:
    """The --require-signature gate: every model argument verified before the command opens it.

    Returns the arguments the command must open instead, in the order given (lists stay lists): with a
    key, each points at a private copy of the verified bytes (removed when the command ends), so a file
    swapped after the check never reaches a parser; without one, the arguments as given. Pass the
    command's report through ``user_paths`` so that it names the user's files, not the copies.
    """
    from modelport.security.gate import verified_snapshot

    snapshot = verified_snapshot(models, public_key or None)
    ctx = _current_context()
    if snapshot.root is not None:
        if ctx is None:  # pragma: no cover - no command context to tie it to: removed when the process exits
            import atexit

            atexit.register(snapshot.close)
        else:
            ctx.with_resource(snapshot)  # removed, and its errors renamed, when the command ends
            ctx.meta.setdefault(_SNAPSHOTS, []).append(snapshot)
    return tuple(snapshot.args)


def user_paths(report: Any) -> Any:
    """``report`` naming the user's files where the command read verified copies of them (``require_signed``)."""
    ctx = _current_context()
    for snapshot in (ctx.meta.get(_SNAPSHOTS, ()) if ctx is not None else ()):
        report = snapshot.restore(report)
    return report


def start_provenance(key: str | None):
    """A ProvenanceSigner for --sign (the key read now: a bad one fails before any work), else None."""
    if not key:
        return None
    from modelport.security.provenance import ProvenanceSigner

    return ProvenanceSigner.load(key)


def resolve_inputs(signer, inputs: Mapping[str, Any]) -> None:
    """Digest the step's inputs (role -> path) before it runs, so the statement records what it received."""
    if signer is not None:
        signer.resolve(inputs)


def finish_provenance(signer, command: str, report: Any, params: Mapping[str, Any]):
    """Write the step's signed provenance beside its output(s), recording the command's options (``ctx.params``)."""
    if signer is None:
        return None
    options = {k: v for k, v in params.items() if k not in _NOT_OPTIONS}
    return signer.attest(command, report, parameters=options)


def emit_report(report: Any, record) -> None:
    """--json: the report, with a "provenance" entry when the step was signed."""
    if record is None:
        emit_json(report)
        return
    from modelport.artifact import to_jsonable

    emit_json({**to_jsonable(report), "provenance": to_jsonable(record)})


def print_provenance(record) -> None:
    if record is None:
        return
    for w in record.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    chain = f", with {record.statements - 1} earlier step(s)" if record.statements > 1 else ""
    console.print(f"signed provenance: {', '.join(record.bundles)} (key {record.key_id[:16]}…{chain})")


def _verify_signature_table(report) -> Table:
    table = Table(title=f"signature of {report.model}", show_header=False)
    table.add_row("signature", report.signature)
    table.add_row("key id", report.key_id)
    table.add_row("files", f"{len(report.files)}")
    for f in report.files[:20]:
        table.add_row("  " + (f.name if f.name != "." else "(the file)"), f"sha256 {f.sha256}")
    if len(report.files) > 20:
        table.add_row("  …", f"{len(report.files) - 20} more")
    return table


def _chain_table(report) -> Table:
    table = Table(title=f"provenance of {report.path}")
    for col in ("step", "command", "input -> output", "verdict", "signed by", "finished"):
        table.add_column(col)
    for i, step in enumerate(report.steps, 1):
        ins = ", ".join(f"{r.name} ({r.digest[:19]}…)" for r in step.inputs if r.role in ("model", "teacher", "student"))
        outs = ", ".join(f"{r.name} ({r.digest[:19]}…)" for r in step.outputs)
        table.add_row(str(i), step.command, f"{ins} -> {outs}", step.summary, step.key_id[:16] + "…", step.finished_on)
    return table


def register(app: typer.Typer) -> None:
    @app.command("keygen")
    def keygen(
        out: Annotated[str, typer.Option("-o", "--out", help="The private key to write (PEM, mode 0600); the public key goes beside it as .pub.")] = "key.pem",
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Make an ECDSA P-256 key pair for signing models and provenance (never overwrites a key)."""
        from modelport.security.signing import keygen as make_keys

        keys = make_keys(out)
        if as_json:
            emit_json(keys)
            return
        console.print(f"wrote private key {keys.private} (mode 0600) and public key {keys.public}; key id {keys.key_id}")

    @app.command("sign")
    def sign(
        path: Annotated[str, typer.Argument(help="Model file or directory to sign.")],
        key: Annotated[str, typer.Option("--key", help="Private key (PEM, ECDSA P-256/384/521), e.g. from `modelport keygen`.")],
        signature: Annotated[Optional[str], typer.Option("--signature", help="Where to write the signature (default: PATH.sig beside the model).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Sign a model file or directory (an OpenSSF model-signing bundle, verifiable with `model_signing verify key`)."""
        from modelport.security.signing import sign as sign_model

        report = sign_model(path, key, signature)
        if as_json:
            emit_json(report)
            return
        console.print(f"signed {report.model} ({len(report.files)} file(s)): {report.signature}; key id {report.key_id[:16]}…")

    signature_app = typer.Typer(help="Verify a model's signature.", no_args_is_help=True)

    @signature_app.command("verify")
    def signature_verify(
        path: Annotated[str, typer.Argument(help="Model file or directory.")],
        pub: Annotated[str, typer.Option("--pub", help="Public key (PEM) the model must be signed with.")],
        signature: Annotated[Optional[str], typer.Option("--signature", help="The signature (default: PATH.sig, else DIR/model.sig).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Verify a model against its signature: any changed, added, removed or renamed file fails (exit 4)."""
        from modelport.security.signing import verify as verify_model

        report = verify_model(path, pub, signature)
        if as_json:
            emit_json(report)
            return
        console.print(_verify_signature_table(report))
        console.print(f"signature ok: {report.model} matches {report.signature}")

    provenance_app = typer.Typer(help="Verify the signed provenance chain of a model.", no_args_is_help=True)

    @provenance_app.command("verify")
    def provenance_verify(
        path: Annotated[str, typer.Argument(help="A model written with --sign (convert, adapt, compress, distill), or a registry version NAME@V.")],
        pub: Annotated[list[str], typer.Option("--pub", help="Public key(s) the statements must be signed with (repeatable).")],
        bundle: Annotated[Optional[str], typer.Option("--provenance", help="The provenance file (default: PATH.intoto.jsonl beside the model).")] = None,
        registry: Annotated[Optional[str], typer.Option("--registry", help="With NAME@V: the registry (default: $MODELPORT_REGISTRY, else ~/.modelport/registry).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
    ) -> None:
        """Verify a model's signed provenance and walk its chain back to the original input; print it.

        NAME@V (not an existing path) verifies what the registry stored with that version, walking the
        statements stored with its ancestors where its own bundle does not reach."""
        from modelport.registry.record import is_registry_ref
        from modelport.security.provenance import verify as verify_chain

        if is_registry_ref(path):
            from modelport.errors import BadInputError
            from modelport.registry.store import Registry
            from modelport.security.provenance import verify_ref

            if bundle is not None:
                raise BadInputError("--provenance is for a model file: a registry version's provenance is stored with it")
            with Registry.open(registry, create=False) as reg:
                report = verify_ref(reg, path, pub)
        else:
            report = verify_chain(path, pub, bundle)
        if as_json:
            emit_json(report)
            return
        console.print(_chain_table(report))
        for ref in report.originals:
            console.print(f"original input ({ref.role}): {ref.name} {ref.digest}")
        for note in report.notes:
            console.print(f"note: {note}", markup=False, soft_wrap=True)
        console.print(f"provenance ok: {len(report.steps)} signed step(s) from the original input to {report.path}")

    app.add_typer(signature_app, name="signature")
    app.add_typer(provenance_app, name="provenance")
