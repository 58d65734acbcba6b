"""A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a
temporary directory, as a non-root user, listening on 127.0.0.1 on a free port and on a unix
socket in that directory. Nothing outside the directory is touched; :meth:`PgCluster.stop`
stops the server and removes it.

PostgreSQL refuses to run as root, and CI runs as root: there the cluster runs as ``nobody``
(through ``runuser``), in a directory handed over to that user.

>>> with PgCluster.start(tmp) as pg:                     # doctest: +SKIP
...     url = pg.create_database("t1")                   # postgresql://postgres@127.0.0.1:PORT/t1
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PASSWORD_ROLE", "PG_BIN", "PgCluster", "pg_missing"]

PG_BIN = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
               if (p / "initdb").exists()), None)
_RUN_AS = "nobody"
PASSWORD_ROLE = "ledger_pw"  # the one role that must authenticate with a password


def pg_missing() -> str | None:
    """Why no throwaway cluster can be started here, or None."""
    if PG_BIN is None:
        return "PostgreSQL server binaries not installed (Debian package postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    """A running throwaway cluster; ``url(dbname)`` is how a client reaches it."""

    def __init__(self, root: Path, port: int, owned_root: bool) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self._owned_root = owned_root
        self._n = 0

    @classmethod
    def start(cls, root: Path | None = None, *, durable: bool = False) -> PgCluster:
        """initdb and start a cluster under ``root`` (a new temporary directory if None).

        ``durable=False`` turns fsync off: fast for tests, which kill ledger processes, not
        the database server. Benchmarks pass ``durable=True`` (every commit synced)."""
        why = pg_missing()
        if why is not None:
            raise RuntimeError(why)
        owned = root is None
        root = Path(tempfile.mkdtemp(prefix="scan-ledger-pg-")) if root is None else root
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(_RUN_AS)
            os.chmod(root, 0o755)
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = cls(root, _free_port(), owned)
        try:
            cluster._run(["initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust",
                          "-E", "UTF8", "--locale=C", "--no-sync"])
            conf = [f"port = {cluster.port}", "listen_addresses = '127.0.0.1'",
                    f"unix_socket_directories = '{root}'", "max_connections = 100",
                    "shared_buffers = 64MB", "log_min_messages = warning"]
            if not durable:
                conf += ["fsync = off", "full_page_writes = off"]
            cluster._run(["sh", "-c", f"cat >> '{cluster.data}/postgresql.conf'"],
                         stdin="\n".join(conf) + "\n")
            # Trust, except for PASSWORD_ROLE, which must give its password (the tests of
            # credentials read by libpq: a passfile, the environment).
            cluster._run(["sh", "-c", f"cat > '{cluster.data}/pg_hba.conf'"],
                         stdin=f"local all all trust\n"
                               f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
                               "host all all 127.0.0.1/32 trust\n")
            cluster._run(["pg_ctl", "-D", str(cluster.data), "-l", str(root / "server.log"),
                          "-w", "-t", "60", "start"])
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _run(self, argv: list[str], stdin: str | None = None) -> None:
        assert PG_BIN is not None
        if argv[0] != "sh":
            argv = [str(PG_BIN / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", _RUN_AS, "--", *argv]
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120,
                             cwd=self.root)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): "
                               f"{out.stderr.strip() or out.stdout.strip()}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        if name is None:
            self._n += 1
            name = f"ledger_{self._n}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop_server(self) -> None:
        """Stop the server (fast shutdown: every session ends), keeping its data."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"])

    def start_server(self) -> None:
        """Start the server again after :meth:`stop_server`, on the same port."""
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                   "-w", "-t", "60", "start"])

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; idempotent."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30",
                           "stop"])
        if self._owned_root:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    @contextlib.contextmanager
    def running(cls, durable: bool = False) -> Iterator[PgCluster]:
        cluster = cls.start(durable=durable)
        try:
            yield cluster
        finally:
            cluster.stop()
