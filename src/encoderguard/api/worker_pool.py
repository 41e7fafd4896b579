"""``serve --workers N``: N server processes on one host behind one listening socket.

The parent binds the port once and starts N ``encoderguard serve`` processes that inherit the socket (the kernel
hands each new connection to one of them), then waits. Every worker opens the same ledger: a SQLite file
(processes on one host serialise their writes on its lock) or a PostgreSQL database (row locks; also shared with
``serve`` processes on other hosts). Quotas, idempotent replays and defence state live in the ledger and hold across
workers; the per-key rate limit and the failed-authentication limiter are per process, so a key gets up to N times
its rate.

SIGINT/SIGTERM to the parent stop every worker gracefully. A worker that dies (``kill -9``) is started again; a
worker that fails within its first seconds (a bad ledger URL, an unreachable database) stops the pool with its
error.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

# A worker that exits within this many seconds of its start failed to start: the pool stops instead of looping.
START_GRACE = 10.0


def without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


def run_workers(*, argv: Sequence[str], workers: int, host: str, port: int,
                on_bind: Callable[[str], None] | None = None) -> str:
    """Bind ``host:port``, run ``encoderguard ARGV`` in ``workers`` processes on the socket, until a stop signal.

    Args:
        argv: the ``serve`` command line (``--workers`` and ``--port`` are replaced).
        workers: number of processes (>= 1).
        host, port: where to listen (``port`` 0 picks a free one).
        on_bind: called with the URL once the socket is bound.

    Returns:
        The URL that was served.

    Raises:
        ValueError: ``workers < 1``.
        RuntimeError: a worker failed at start-up (its error is on stderr).
    """
    from encoderguard.api.server import _bind, _url

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    fd = sock.fileno()
    child_argv = [sys.executable, "-m", "encoderguard",
                  *without_flag(without_flag(without_flag(argv, "--workers"), "--port"), "--listen-fd"),
                  "--port", str(sock.getsockname()[1]), "--listen-fd", str(fd)]
    stop = threading.Event()
    procs: list[subprocess.Popen[bytes]] = []
    started: list[float] = []

    def start(i: int) -> None:
        proc = subprocess.Popen(child_argv, pass_fds=(fd,))
        if i < len(procs):
            procs[i], started[i] = proc, time.monotonic()
        else:
            procs.append(proc)
            started.append(time.monotonic())

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(workers):
            start(i)
        if on_bind is not None:
            on_bind(url)
        failure: str | None = None
        while not stop.is_set():
            for i, proc in enumerate(procs):
                code = proc.poll()
                if code is None:
                    continue
                if time.monotonic() - started[i] < START_GRACE:
                    failure = f"worker {i} exited with status {code} at start-up"
                    stop.set()
                    break
                logger.warning("worker %d (pid %d) exited with status %s; starting it again", i, proc.pid, code)
                start(i)
            stop.wait(0.2)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if failure is not None:
            raise RuntimeError(failure + "; its error is above")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(OSError):
            sock.close()
    return url
