"""A registry version as an OCI image layout: a directory any OCI tool (oras, skopeo, crane) can push.

Layout written under ``DIR`` (OCI image-spec v1.1, "image layout")::

    oci-layout                    {"imageLayoutVersion": "1.0.0"}
    index.json                    one manifest per exported version, tagged ``org.opencontainers.image.ref.name``
    blobs/sha256/<digest>         the config, every file of the model (one layer each) and the manifest

The manifest is an OCI *artifact* manifest (``artifactType`` = ``application/vnd.modelport.model.v1``):

- ``config``: ``application/vnd.modelport.model.config.v1+json``, the version's metadata (name, number,
  format, files with size/sha256/mode, step, parents, tags, aliases);
- ``layers``: one per file, media type ``application/vnd.modelport.model.file.v1`` (``...file.v1+onnx``
  etc. where the suffix names a known model file), annotated with ``org.opencontainers.image.title`` (the
  file's relative path, the ORAS convention, so ``oras pull`` recreates the tree) and ``io.modelport.file.mode``;
- ``annotations``: ``io.modelport.lineage`` (the lineage DAG around the version, JSON), ``io.modelport.name``,
  ``io.modelport.version``, ``io.modelport.format``, ``org.opencontainers.image.created``.

Files are stored whole (an OCI layer is a blob; the registry's tensor dedup does not carry over, but
identical files of several exported versions share a blob). Every blob lands temp + fsync + rename;
``index.json`` is replaced last, so a killed export leaves the layout as it was (plus unreferenced
blobs). ``unpack`` reads a layout back and rebuilds the files byte-identical, checking every digest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modelport.errors import BadInputError, CheckFailedError
from modelport.registry.blobs import fsync_dir

__all__ = ["OciExport", "write_layout", "read_layout", "unpack", "export", "MEDIA_MANIFEST", "MEDIA_INDEX",
           "MEDIA_CONFIG", "MEDIA_FILE", "ARTIFACT_TYPE", "LINEAGE_ANNOTATION"]

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.modelport.model.config.v1+json"
MEDIA_FILE = "application/vnd.modelport.model.file.v1"
ARTIFACT_TYPE = "application/vnd.modelport.model.v1"
LINEAGE_ANNOTATION = "io.modelport.lineage"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
_SUFFIX_TYPES = {".onnx": "onnx", ".tflite": "tflite", ".keras": "keras", ".h5": "h5", ".safetensors": "safetensors",
                 ".pt2": "pt2", ".pt": "pt", ".xml": "openvino-xml", ".bin": "bin", ".pb": "pb", ".json": "json",
                 ".py": "python"}
_CHUNK = 16 << 20


@dataclasses.dataclass(frozen=True)
class OciExport:
    """What ``export`` wrote: the layout, the manifest's digest and the tag it is listed under."""

    ref: str
    layout: str
    tag: str
    manifest_digest: str
    config_digest: str
    layers: tuple[dict[str, Any], ...]  # {"path", "digest", "size", "mediaType"}
    bytes_written: int  # new blob bytes (a blob already in the layout is not written twice)

    def to_dict(self) -> dict[str, Any]:
        from modelport.artifact import to_jsonable

        return to_jsonable(self)


def media_type(rel: str) -> str:
    kind = _SUFFIX_TYPES.get(Path(rel).suffix.lower())
    return f"{MEDIA_FILE}+{kind}" if kind else MEDIA_FILE


class _Blobs:
    """``blobs/sha256`` of one layout: content-addressed, landed temp + fsync + rename."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.written = 0

    def path(self, digest: str) -> Path:
        return self.dir / digest.removeprefix("sha256:")

    def _land(self, digest: str, write) -> None:
        target = self.path(digest)
        if target.is_file():  # content-addressed: the same digest is the same bytes
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                self.written += write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(self.dir)

    def put_bytes(self, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._land(digest, lambda f: f.write(data))
        return {"digest": digest, "size": len(data)}

    def put_file(self, src: Path) -> dict[str, Any]:
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        digest = "sha256:" + h.hexdigest()

        def copy(out) -> int:
            again = hashlib.sha256()
            n = 0
            with open(src, "rb") as f:
                while chunk := f.read(_CHUNK):
                    again.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
            if "sha256:" + again.hexdigest() != digest:
                raise CheckFailedError(f"{src} changed while it was being exported")
            return n

        self._land(digest, copy)
        return {"digest": digest, "size": size}


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _model_files(model: Path) -> list[tuple[str, Path]]:
    """(relative path, file) for a single-file model (its own name) or every file of a directory."""
    if model.is_file():
        return [(model.name, model)]
    return sorted((p.relative_to(model).as_posix(), p) for p in model.rglob("*") if p.is_file())


def _check_target(out: Path) -> bool:
    """True when ``out`` is an existing OCI layout (add to it); False when it is absent or empty."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise BadInputError("the OCI export target exists and is not a directory", path=out)
    if (out / "oci-layout").is_file():
        try:
            layout = json.loads((out / "oci-layout").read_text())
            index = json.loads((out / "index.json").read_text())
        except (OSError, ValueError) as exc:
            raise BadInputError(f"not a readable OCI image layout ({exc})", path=out) from None
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout or not isinstance(index, dict):
            raise BadInputError("not an OCI image layout (oci-layout or index.json malformed)", path=out)
        return True
    if any(out.iterdir()):
        raise BadInputError("the OCI export target is a non-empty directory that is not an OCI image layout", path=out)
    return False


def write_layout(model: Path | str, out: Path | str, *, tag: str, config: dict[str, Any],
                 annotations: dict[str, str]) -> tuple[str, str, list[dict[str, Any]], int]:
    """Write ``model`` (a file or directory) into the OCI layout ``out`` under ``tag``.

    Returns (manifest digest, config digest, layers, new blob bytes). A manifest already listed under
    ``tag`` is replaced in the index (its blobs stay; they may be shared).
    """
    model, out = Path(model), Path(out)
    existing = _check_target(out)
    fresh = not existing
    root = Path(tempfile.mkdtemp(prefix=f".{out.name}.oci-", dir=out.parent)) if fresh else out
    if fresh:
        out.parent.mkdir(parents=True, exist_ok=True)
    try:
        blobs = _Blobs(root)
        layers = []
        for rel, path in _model_files(model):
            desc = blobs.put_file(path)
            layers.append({"mediaType": media_type(rel), **desc,
                           "annotations": {TITLE: rel, "io.modelport.file.mode": format(path.stat().st_mode & 0o777, "o")}})
        config_desc = {"mediaType": MEDIA_CONFIG, **blobs.put_bytes(_canonical(config))}
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "artifactType": ARTIFACT_TYPE,
                    "config": config_desc, "layers": layers,
                    "annotations": {"org.opencontainers.image.created": datetime.now(timezone.utc).isoformat(),
                                    **annotations}}
        manifest_desc = {"mediaType": MEDIA_MANIFEST, "artifactType": ARTIFACT_TYPE, **blobs.put_bytes(_canonical(manifest)),
                         "annotations": {REF_NAME: tag}}
        index = json.loads((root / "index.json").read_text()) if existing else {
            "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}
        index["manifests"] = [m for m in index.get("manifests", [])
                              if (m.get("annotations") or {}).get(REF_NAME) != tag] + [manifest_desc]
        _write_json(root / "index.json", index)
        if fresh:
            _write_json(root / "oci-layout", {"imageLayoutVersion": "1.0.0"})
            fsync_dir(root)
            if out.exists():  # an empty directory: replace it
                out.rmdir()
            os.replace(root, out)
        return manifest_desc["digest"], config_desc["digest"], layers, blobs.written
    except BaseException:
        if fresh:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_blob(layout: Path, digest: str, limit: int = 64 << 20) -> bytes:
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    try:
        if path.stat().st_size > limit:
            raise BadInputError(f"blob {digest} is too large to be a manifest or config", path=layout)
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckFailedError(f"blob {digest} is missing", path=layout) from None
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise CheckFailedError(f"blob {digest} is corrupt: its bytes no longer hash to its name", path=layout)
    return data


def read_layout(layout: Path | str, tag: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of the manifest tagged ``tag`` in the layout (the only one when ``tag`` is None)."""
    layout = Path(layout)
    try:
        json.loads((layout / "oci-layout").read_text())
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"not a readable OCI image layout ({exc})", path=layout) from None
    manifests = index.get("manifests", []) if isinstance(index, dict) else []
    tags = [(m.get("annotations") or {}).get(REF_NAME) for m in manifests]
    if tag is None:
        if len(manifests) != 1:
            raise BadInputError(f"the layout holds {len(manifests)} manifests; name one of: {', '.join(map(str, tags))}",
                                path=layout)
        desc = manifests[0]
    else:
        found = [m for m, t in zip(manifests, tags) if t == tag]
        if not found:
            raise BadInputError(f"no manifest tagged {tag!r} (tags: {', '.join(map(str, tags)) or 'none'})", path=layout)
        desc = found[-1]
    manifest = json.loads(_read_blob(layout, desc["digest"]))
    config = json.loads(_read_blob(layout, manifest["config"]["digest"]))
    return manifest, config


def unpack(layout: Path | str, out: Path | str, tag: str | None = None) -> Path:
    """Rebuild the model files of a manifest into ``out`` (a file for a single-file model, else a
    directory), checking every layer's digest and size; temp + rename, nothing half-written."""
    layout, out = Path(layout), Path(out)
    manifest, config = read_layout(layout, tag)
    if out.exists():
        raise BadInputError("already exists; unpack into a new path", path=out)
    single = config.get("kind") == "file"
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.unpack-", dir=out.parent))
    try:
        for layer in manifest["layers"]:
            rel = (layer.get("annotations") or {}).get(TITLE, "")
            dest = (work / "file") if single else (work / rel)
            if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise CheckFailedError(f"layer {layer['digest']} has an unsafe title {rel!r}", path=layout)
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = layout / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")
            h = hashlib.sha256()
            try:
                with open(src, "rb") as f, open(dest, "wb") as o:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        o.write(chunk)
            except FileNotFoundError:
                raise CheckFailedError(f"layer {layer['digest']} ({rel}) is missing", path=layout) from None
            if "sha256:" + h.hexdigest() != layer["digest"] or dest.stat().st_size != layer["size"]:
                raise CheckFailedError(f"layer {layer['digest']} ({rel}) is corrupt", path=layout)
            mode = (layer.get("annotations") or {}).get("io.modelport.file.mode")
            if mode:
                os.chmod(dest, int(mode, 8))
        os.replace(work / "file" if single else work, out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export(registry, ref: str, out: Path | str, *, tag: str | None = None) -> OciExport:
    """Export the registry version ``ref`` to the OCI layout ``out`` (created, or added to)."""
    from modelport.registry import lineage as lineage_mod

    version = registry.resolve(ref)
    out = Path(out)
    _check_target(out)  # before any work: a target that is no layout is refused
    tag = tag or f"{version.name.replace('/', '-')}-v{version.number}"
    graph = lineage_mod.lineage(registry, f"{version.name}@{version.number}")
    with tempfile.TemporaryDirectory(prefix=".modelport-oci-", dir=_scratch_parent(out)) as tmp:
        model = registry.get(f"{version.name}@{version.number}", Path(tmp) / _leaf(version))
        config = _config(version, model)
        annotations = {
            LINEAGE_ANNOTATION: json.dumps(graph.to_dict(), sort_keys=True, separators=(",", ":")),
            "io.modelport.name": version.name,
            "io.modelport.version": str(version.number),
            "io.modelport.format": version.format,
            "org.opencontainers.image.title": model.name,
        }
        manifest_digest, config_digest, layers, written = write_layout(model, out, tag=tag, config=config,
                                                                       annotations=annotations)
    return OciExport(f"{version.name}@{version.number}", str(out), tag, manifest_digest, config_digest,
                     tuple({"path": layer["annotations"][TITLE], "digest": layer["digest"], "size": layer["size"],
                            "mediaType": layer["mediaType"]} for layer in layers), written)


def _scratch_parent(out: Path) -> Path:
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _leaf(version) -> str:
    from modelport.registry.record import leaf_name

    return leaf_name(version)


def _config(version, model: Path) -> dict[str, Any]:
    from modelport.artifact import to_jsonable

    files = [{"path": rel, "size": p.stat().st_size, "mode": format(p.stat().st_mode & 0o777, "o")}
             for rel, p in _model_files(model)]
    return to_jsonable({
        "name": version.name, "version": version.number, "format": version.format,
        "kind": "file" if model.is_file() else "dir", "files": files,
        "files_sha256": version.files_sha256, "created_at": str(version.created_at),
        "step": version.step, "parents": [str(p) for p in (version.parents or ())],
        "tags": dict(version.tags or {}), "aliases": list(version.aliases or ()),
        "lineage": version.lineage,
    })
