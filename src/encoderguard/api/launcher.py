"""Run the HTTP server in a child process on 127.0.0.1: for the demo, benchmarks and tests that need the real
``encoderguard serve`` (its own process, port, ledger file and signal handling) rather than an in-process app.

    with launch_server("runs/victim", keys="keys.json", ledger="ledger.sqlite") as server:
        api = HTTPEmbeddingAPI(server.url, key)

The port is a free one picked just before the start; the launcher waits until ``GET /health`` answers 200 and stops
the server (SIGINT, then SIGKILL after ``stop_timeout``) when the block ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from encoderguard.errors import EncoderGuardError

HOST = "127.0.0.1"


class ServerStartError(EncoderGuardError):
    """The server process exited or did not answer ``/health`` in time."""


def serve_command() -> list[str]:
    """The ``encoderguard serve`` command of this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "encoderguard.cli.main", "serve"]


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS's choice for an ephemeral bind)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A running server child process; a context manager that stops it on exit.

    Attributes:
        url: ``http://127.0.0.1:PORT``.
        proc: the child process (``proc.pid``, ``proc.returncode``).
        log_path: where its stderr goes (``None``: discarded).
    """

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path | None, log: IO[bytes] | None,
                 stop_timeout: float) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path
        self._log, self._stop_timeout = log, stop_timeout

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> int | None:
        """Stop the server (SIGINT, SIGKILL after the stop timeout) and return its exit code; idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None and not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerProcess({self.url}, pid={self.proc.pid}, returncode={self.proc.poll()})"


def launch_server(encoder: str | os.PathLike[str] | None, *, keys: str | os.PathLike[str],
                  ledger: str | os.PathLike[str], extra: Sequence[str] = (), command: Sequence[str] | None = None,
                  port: int | None = None, env: Mapping[str, str] | None = None,
                  log: str | os.PathLike[str] | None = None, append_log: bool = False, timeout: float = 120.0,
                  stop_timeout: float = 20.0) -> ServerProcess:
    """Start ``encoderguard serve`` on 127.0.0.1 and wait until it answers ``GET /health``.

    Args:
        encoder: the encoder checkpoint directory (``--encoder``); ``None`` when ``command`` names its own model.
        keys: keys file (``--keys``).
        ledger: ledger file (``--ledger``).
        extra: more ``serve`` flags, e.g. ``["--defence", "coverage"]``.
        command: the program to run instead of ``encoderguard serve`` (it must accept ``--host``, ``--port``,
            ``--keys`` and ``--ledger``).
        port: the port (default: a free one).
        env: the child's environment (default: this process's, with progress bars off).
        log: file for the server's stderr (default: discarded).
        append_log: append to ``log`` instead of overwriting it.
        timeout: seconds to wait for ``/health``.
        stop_timeout: seconds :meth:`ServerProcess.stop` waits after SIGINT before killing.

    Returns:
        The running :class:`ServerProcess` (use it as a context manager).

    Raises:
        ServerStartError: the server exited, or did not answer within ``timeout`` (it is then killed).
        ValueError: no ``encoder`` and no ``command``.
    """
    if encoder is None and command is None:
        raise ValueError("launch_server needs an encoder directory or a command")
    port = free_port() if port is None else int(port)
    argv = list(command) if command is not None else [*serve_command(), "--encoder", os.fspath(encoder or "")]
    argv += ["--host", HOST, "--port", str(port), "--keys", os.fspath(keys), "--ledger", os.fspath(ledger), *extra]
    child_env = dict(env) if env is not None else {**os.environ, "ENCODERGUARD_NO_PROGRESS": "1"}
    log_path = Path(log) if log is not None else None
    sink = log_path.open("ab" if append_log else "wb") if log_path is not None else None
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=sink if sink is not None else subprocess.DEVNULL,
                            env=child_env)
    server = ServerProcess(proc, f"http://{HOST}:{port}", log_path, sink, stop_timeout)
    deadline = time.monotonic() + timeout
    while not _healthy(server.url):
        if proc.poll() is not None:
            server.stop()
            where = f" (see {log_path})" if log_path is not None else ""
            raise ServerStartError(f"the server exited with {proc.returncode} before answering{where}: "
                                   f"{' '.join(argv)}")
        if time.monotonic() > deadline:
            proc.kill()
            server.stop()
            raise ServerStartError(f"the server did not answer {server.url}/health within {timeout:.0f} s")
        time.sleep(0.1)
    return server


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310 (a local http URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False
