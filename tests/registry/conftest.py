"""Registry fixtures: a throwaway PostgreSQL cluster (initdb + pg_ctl, in a temp dir, on a free port,
stopped at the end of the session), registry URLs for both back ends, and the real models the
registry tests store (ONNX, a generated PyTorch directory, Keras, TFLite)."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

_PG_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


def _pg_tool(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in _PG_DIRS if os.access(f"{d}/{name}", os.X_OK)), None)


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The account the server runs as: ourselves, or (initdb refuses root) an unprivileged one."""
    if os.getuid() != 0:
        return None
    for name in ("postgres", "nobody", "daemon"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


@dataclasses.dataclass
class PostgresServer:
    base: Path
    socket_dir: Path
    port: int
    pg_ctl: str
    user: pwd.struct_passwd | None
    _counter: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))

    def url(self, database: str, blobs: Path) -> str:
        return (f"postgresql+psycopg://modelport@/{database}?host={self.socket_dir}&port={self.port}"
                f"&blobs={blobs}")

    def create_database(self) -> str:
        import psycopg

        name = f"reg{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(host=str(self.socket_dir), port=self.port, user="modelport", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return name

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        kw = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}
        return subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster of its own: initdb into a temp dir, pg_ctl start on a free port (TCP on
    127.0.0.1 and a unix socket in the temp dir), trust auth for the `modelport` superuser."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (`make postgres` installs Debian's postgresql)")
    user = _server_user()
    if os.getuid() == 0 and user is None:
        pytest.skip("initdb refuses to run as root and there is no unprivileged account to run it as")
    base = Path(tempfile.mkdtemp(prefix="modelport-pg-"))  # not under tmp_path: its parents are private to us
    server = PostgresServer(base=base, socket_dir=base / "sock", port=_free_port(), pg_ctl=pg_ctl, user=user)
    server.socket_dir.mkdir()
    if user is not None:
        for p in (base, server.socket_dir):
            os.chown(p, user.pw_uid, user.pw_gid)
    try:
        done = server._run(initdb, "-D", str(base / "data"), "-U", "modelport", "--auth=trust", "--no-locale",
                           "-E", "UTF8", "--no-sync")
        if done.returncode:
            pytest.fail(f"initdb failed: {done.stderr.strip()[-800:]}")
        opts = (f"-p {server.port} -k {server.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
        done = server._run(pg_ctl, "-D", str(base / "data"), "-l", str(base / "server.log"), "-o", opts, "-w",
                           "-t", "60", "start")
        if done.returncode:
            log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
            pytest.fail(f"pg_ctl start failed: {done.stderr.strip()[-400:]} {log[-800:]}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path) -> str:
    """A fresh, empty registry URL: a directory (SQLite), or a new database on the test server."""
    if request.param == "sqlite":
        return str(tmp_path / "registry")
    server = request.getfixturevalue("postgres_server")
    return server.url(server.create_database(), tmp_path / "blobs")


# ------------------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def onnx_model(cnn_onnx) -> Path:
    """The zoo CNN converted to ONNX by modelport (conv, BN folded or not, linear: real weights)."""
    return Path(cnn_onnx)


@pytest.fixture(scope="session")
def torch_dir(tmp_path_factory, onnx_model) -> Path:
    """The ONNX CNN converted to a generated PyTorch directory (model.py + weights.safetensors)."""
    from modelport.convert.registry import ConvertOptions
    from modelport.convert.run import convert

    out = tmp_path_factory.mktemp("reg_torch") / "cnn_torch"
    convert(str(onnx_model), "torch", out, options=ConvertOptions())
    return out


@pytest.fixture(scope="session")
def keras_model() -> Path:
    import zoo_tf

    return zoo_tf.mlp_sequential()


@pytest.fixture(scope="session")
def tflite_model() -> Path:
    import zoo_tf

    from modelport.quiet import native_output

    with native_output():
        return zoo_tf.tflite_from_keras("mlp")
