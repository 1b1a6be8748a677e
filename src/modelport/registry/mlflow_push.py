"""Log a registry version to an MLflow model registry (the ``modelport[mlflow]`` extra).

For ``push NAME@v --mlflow URI``:

- a run in the experiment ``modelport`` (created with the artifact root given, or, for a
  ``sqlite:///path/mlflow.db`` tracking URI, ``mlartifacts/`` beside the database) holds the version's
  files under ``model/`` and its lineage as ``modelport_lineage.json``;
- a registered model of the same name (or ``model_name``) gets a model version whose source is that
  ``model/`` directory, with the lineage as tags: ``modelport.ref``, ``modelport.format``,
  ``modelport.files_sha256``, ``modelport.parents``, ``modelport.command``, ``modelport.verified``,
  ``modelport.parity``, ``modelport.lineage`` (the JSON, when it fits MLflow's tag length);
- every alias that points at this version in modelport points at the new model version in MLflow
  (``MlflowClient.set_registered_model_alias``). MLflow keeps no alias history; modelport does.

Pushing the same version twice reuses the model version it made the first time (found by its
``modelport.ref`` and ``modelport.files_sha256`` tags) and only mirrors the aliases again.
MLflow's log lines (database migrations, "Creating initial MLflow database tables") are kept off
the terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelport.errors import BadInputError, MissingExtraError

__all__ = ["MlflowPush", "push", "default_artifact_root"]

EXPERIMENT = "modelport"
_TAG_MAX = 5000  # MLflow's limit on a model version tag value


@dataclasses.dataclass(frozen=True)
class MlflowPush:
    """What ``push`` did in MLflow."""

    ref: str
    tracking_uri: str
    model_name: str
    mlflow_version: str
    run_id: str
    source: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    reused: bool  # the model version existed from an earlier push of this version

    def to_dict(self) -> dict[str, Any]:
        from modelport.artifact import to_jsonable

        return to_jsonable(self)


def default_artifact_root(uri: str) -> str | None:
    """``file://<dir of the db>/mlartifacts`` for a sqlite tracking URI (None: MLflow's default)."""
    parts = urlsplit(uri)
    if parts.scheme.startswith("sqlite") and parts.path not in ("", "/"):
        path = parts.path[1:] if parts.path.startswith("//") else parts.path
        return (Path(path).absolute().parent / "mlartifacts").as_uri()
    return None


@contextlib.contextmanager
def _mlflow_silenced():
    """MLflow and alembic log through Python logging (and print migration progress): none of it on the terminal."""
    from modelport.quiet import debug, quiet

    if debug():
        yield
        return
    names = ("mlflow", "alembic", "sqlalchemy")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with quiet():
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _client(uri: str):
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MissingExtraError("mlflow", "mlflow", purpose="registry push --mlflow") from None
    parts = urlsplit(uri)
    if parts.scheme.startswith("sqlite"):
        path = parts.path[1:] if parts.path.startswith("//") else parts.path
        if not path or path == "/":
            raise BadInputError(f"MLflow URI {uri!r}: expected sqlite:///path/to/mlflow.db")
        if not Path(path).absolute().parent.is_dir():
            raise BadInputError(f"MLflow URI {uri!r}: the directory {Path(path).absolute().parent} does not exist")
    elif parts.scheme not in ("http", "https", "file", "databricks", "postgresql", "mysql", "mssql") and "://" in uri:
        raise BadInputError(f"MLflow URI {uri!r}: unsupported scheme {parts.scheme!r}")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment(client, artifact_root: str | None) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=artifact_root)


def _tags(version, graph: dict[str, Any]) -> tuple[dict[str, str], str]:
    step = version.step or {}
    parity = step.get("parity") or {}
    lineage_json = json.dumps(graph, sort_keys=True)
    verified = step.get("verified")
    tags = {
        "modelport.ref": f"{version.name}@{version.number}",
        "modelport.format": version.format,
        "modelport.files_sha256": version.files_sha256,
        "modelport.parents": ",".join(str(p) for p in (version.parents or ())) or "-",
        "modelport.command": str(step.get("command") or "add"),
        "modelport.verified": "-" if verified is None else str(bool(verified)).lower(),
        "modelport.created_at": str(version.created_at),
    }
    if parity:
        tags["modelport.parity"] = json.dumps({k: parity.get(k) for k in ("ok", "max_abs", "max_rel", "rtol", "atol",
                                                                          "shapes") if k in parity}, sort_keys=True)
    tags["modelport.lineage"] = lineage_json if len(lineage_json) <= _TAG_MAX else "see modelport_lineage.json"
    for k, v in (version.tags or {}).items():
        tags[f"modelport.tag.{k}"] = str(v)[:_TAG_MAX]
    return tags, lineage_json


def _existing(client, model_name: str, tags: dict[str, str]):
    for mv in client.search_model_versions(f"name = '{model_name}'"):
        t = mv.tags or {}
        if t.get("modelport.ref") == tags["modelport.ref"] and t.get("modelport.files_sha256") == tags["modelport.files_sha256"]:
            return mv
    return None


def push(registry, ref: str, uri: str, *, model_name: str | None = None,
         artifact_root: str | None = None) -> MlflowPush:
    """Log the registry version ``ref`` to the MLflow registry at ``uri`` (see the module docstring)."""
    from modelport.registry import lineage as lineage_mod

    version = registry.resolve(ref)
    canonical = f"{version.name}@{version.number}"
    graph = lineage_mod.lineage(registry, canonical).to_dict()
    model_name = model_name or version.name
    tags, lineage_json = _tags(version, graph)
    artifact_root = artifact_root or default_artifact_root(uri)
    if artifact_root and "://" not in artifact_root:
        artifact_root = Path(artifact_root).absolute().as_uri()
    aliases = tuple(version.aliases or ())
    with _mlflow_silenced():
        client = _client(uri)
        from mlflow.exceptions import MlflowException

        try:
            return _push(client, registry, version, canonical, uri, model_name, tags, lineage_json, artifact_root,
                         aliases)
        except MlflowException as exc:
            raise BadInputError(f"MLflow at {uri!r} refused the push: {' '.join(str(exc).split())[:300]}") from None


def _push(client, registry, version, canonical, uri, model_name, tags, lineage_json, artifact_root,
          aliases) -> MlflowPush:
    from modelport.registry.record import leaf_name

    try:
        mv = _existing(client, model_name, tags) if _has_model(client, model_name) else None
    except Exception as exc:  # noqa: BLE001  (an unreachable or unreadable store: the user's input)
        raise BadInputError(f"MLflow at {uri!r} cannot be read: {type(exc).__name__}: {exc}") from None
    reused = mv is not None
    if mv is None:
        with tempfile.TemporaryDirectory(prefix="modelport-mlflow-") as tmp:
            model_dir = Path(tmp) / "model"
            model_dir.mkdir()
            registry.get(canonical, model_dir / leaf_name(version))
            (Path(tmp) / "modelport_lineage.json").write_text(lineage_json)
            exp_id = _experiment(client, artifact_root)
            run = client.create_run(exp_id, run_name=canonical,
                                    tags={k: v for k, v in tags.items() if k != "modelport.lineage"})
            run_id = run.info.run_id
            try:
                client.log_artifacts(run_id, str(model_dir), artifact_path="model")
                client.log_artifact(run_id, str(Path(tmp) / "modelport_lineage.json"))
                for key, value in _metrics(version).items():
                    client.log_metric(run_id, key, value)
            except BaseException:
                client.set_terminated(run_id, status="FAILED")
                raise
            client.set_terminated(run_id)
        if not _has_model(client, model_name):
            client.create_registered_model(model_name, tags={"modelport.name": version.name})
        mv = client.create_model_version(model_name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                         tags=tags, description=f"modelport {canonical} ({version.format})")
    for alias in aliases:
        client.set_registered_model_alias(model_name, alias, mv.version)
    return MlflowPush(canonical, uri, model_name, str(mv.version), mv.run_id, mv.source, aliases, tags, reused)


def _has_model(client, model_name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
        return True
    except MlflowException:
        return False


def _metrics(version) -> dict[str, float]:
    """Numeric task metrics and parity errors of the step, as MLflow run metrics."""
    step = version.step or {}
    out: dict[str, float] = {}
    for key, value in (step.get("metrics") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    parity = step.get("parity") or {}
    for key in ("max_abs", "max_rel"):
        if isinstance(parity.get(key), (int, float)):
            out[f"parity_{key}"] = float(parity[key])
    return out
