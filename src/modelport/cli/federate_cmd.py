"""`modelport federate`: federated learning across frameworks on Flower; the global model as ONNX."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from modelport.cli.output import console, emit_json, err_console, fmt_float
from modelport.cli.registry_lineage_cmd import RegistryOpt


def _round_line(r, total: int) -> str:
    acc = f"accuracy {r.accuracy:.4f} (loss {r.loss:.3f})" if r.accuracy is not None else "no test data"
    if r.round == 0:
        return f"round 0/{total}: initial model: {acc}"
    failed = f"; {len(r.failures)} failed: {r.failures[0]}" if r.failures else ""
    return f"round {r.round}/{total}: {acc}, {r.replies} client(s) replied{failed} [{r.seconds:.0f} s]"


def register(app: typer.Typer) -> None:
    @app.command("federate")
    def federate(
        config: Annotated[str, typer.Option("--config", help="The federation: fed.toml (model, rounds, strategy, one table per client).")],
        simulate: Annotated[bool, typer.Option("--simulate", help="Run on Flower's simulation engine (Ray), one virtual supernode per client (default).")] = False,
        deploy: Annotated[bool, typer.Option("--deploy", help="Run flower-superlink and one flower-supernode per client as processes on localhost.")] = False,
        out: Annotated[Optional[str], typer.Option("-o", "--out", help="The global model (.onnx; default: fed.toml's output).")] = None,
        work_dir: Annotated[Optional[str], typer.Option("--work-dir", help="Keep the run's files (plan, Flower app, logs) in this new or empty directory.")] = None,
        register_name: Annotated[Optional[str], typer.Option("--register", help="Add the global model to the registry as a version of NAME, with the federation as its step.")] = None,
        registry: RegistryOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Train one model across clients in different frameworks (Keras, PyTorch, generated PyTorch) with Flower."""
        from modelport.errors import BadInputError
        from modelport.federated.run import federate as run_federation

        if simulate and deploy:
            raise BadInputError("--simulate and --deploy exclude each other")
        if register_name is not None:  # a bad name or registry fails before any work is done
            from modelport.registry.refs import check_name
            from modelport.registry.store import Registry

            check_name(register_name)
            Registry.open(registry, create=True).close()
        from modelport.federated.config import load_config

        total = load_config(config).rounds

        def on_round(r) -> None:
            if not as_json:
                err_console.print(_round_line(r, total), markup=False, soft_wrap=True)

        report = run_federation(config, mode="deploy" if deploy else "simulate", output=out, work_dir=work_dir,
                                on_round=on_round)
        registration = None
        if register_name is not None:
            from modelport.federated.lineage import register_global

            registration = register_global(report, register_name, registry)
        if as_json:
            doc = report.to_dict()
            if registration is not None:
                doc["registered"] = registration
            emit_json(doc)
            return
        table = Table(title=f"federate ({report.mode}, {report.strategy}): {len(report.clients)} clients, "
                            f"{report.keys} canonical tensors")
        for col in ("client", "framework", "examples", "mapping max abs err", "round trip"):
            table.add_column(col)
        for c in report.clients:
            table.add_row(c.name, c.framework, str(c.examples), fmt_float(c.mapping_max_abs_err),
                          "exact" if c.round_trip_exact else "NOT exact")
        console.print(table)
        rounds = Table(title="rounds (global model on the test data)")
        names = [c.name for c in report.clients]
        for col in ("round", "accuracy", "loss", "replies", *(f"{n} train acc" for n in names)):
            rounds.add_column(col)
        for r in report.rounds:
            per = {name: acc for name, _, acc in r.clients}
            rounds.add_row(str(r.round), fmt_float(r.accuracy, ".4f"), fmt_float(r.loss, ".4f"),
                           "-" if r.round == 0 else f"{r.replies}/{len(names)}",
                           *(fmt_float(per.get(n), ".4f") for n in names))
        console.print(rounds)
        if report.dp:
            console.print(f"differential privacy: {report.dp['mode']}-side fixed clipping, noise multiplier "
                          f"{report.dp['noise_multiplier']:g}, clipping norm {report.dp['clipping_norm']:g}")
        if report.secagg:
            console.print(f"secure aggregation: SecAgg+, {report.secagg['num_shares']} shares, reconstruction "
                          f"threshold {report.secagg['reconstruction_threshold']}")
        for w in report.warnings:
            console.print(f"[yellow]warning:[/] {w}")
        console.print(f"output: {report.output}  ({report.seconds:.0f} s)")
        if registration is not None:
            console.print(f"registered {registration['version']} in {registration['registry']}", markup=False)
