"""Process helpers for local servers (runtime, tests and benchmarks): a free loopback port, whether a given port is
free, a child process stopped on exit, and a wait for it to answer."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: held open together while picked (one ``free_port`` after another
    can hand out the same port twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``host:port`` now. Probed the way servers bind (SO_REUSEADDR): the connections of
    a server just stopped sit in TIME_WAIT for about a minute and do not keep it from starting again; a socket
    listening there does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_until(ready: Callable[[], object], what: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Call ``ready`` until it returns without raising; fail with the log's tail if ``process`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            ready()
            return
        except Exception as exc:  # not accepting requests yet
            last_error = exc
            time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s ({last_error}):\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``command`` in its own session, its output in ``log``; terminated (killed after 15 s) on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
