"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary folder, a free port on 127.0.0.1.

``initdb`` refuses to run as root; as root the cluster belongs to the ``postgres`` user (Debian's package creates
it) or, without one, to ``nobody``, and every server command runs through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """Start with :meth:`start` (or ``with``), connect with :attr:`url`, stop and delete with :meth:`stop`."""

    def __init__(self, *, bin_dir: str | Path | None = None, database: str = "encoderguard",
                 user: str = "encoderguard", durable: bool = False) -> None:
        found = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        if found is None or not (found / "initdb").exists():
            raise FileNotFoundError("PostgreSQL's initdb was not found: install the server (Debian: apt-get install "
                                    "postgresql; `make setup` does it as root)")
        # durable=False runs with fsync=off: fast tests; a crash of the database server may lose commits. Timings
        # of the ledger's overhead need durable=True, as a production server runs.
        self.bin_dir, self.database, self.user, self.durable = found, database, user, durable
        self.port = 0
        self.root: Path | None = None
        self._owner: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._owner is not None:
            cmd = ["runuser", "-u", self._owner, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)

    def start(self) -> str:
        self.root = Path(tempfile.mkdtemp(prefix="encoderguard-pg-"))
        if os.geteuid() == 0:
            self._owner = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if self._owner is None:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user to own the cluster")
            entry = pwd.getpwnam(self._owner)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  *(() if self.durable else ("--no-sync",)))
        self.port = _free_port()
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        options += "" if self.durable else " -c fsync=off"
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        return self.url

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def fresh_database(cluster: PostgresCluster) -> str:
    """A new empty database on ``cluster``'s server; its URL."""
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.url.rsplit("/", 1)[0] + "/" + name
