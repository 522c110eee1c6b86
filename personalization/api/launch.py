"""Start ``pe serve`` in its own process and wait until it answers (tests and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

#: The ``pe`` entry point of the running interpreter's environment.
PE = str(Path(sys.executable).parent / "pe")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_subprocess(env: dict[str, str], args: tuple[str, ...] | list[str], log_dir: Path, cwd: Path | None = None,
                     timeout_s: float = 60.0) -> Iterator[str]:
    """``pe serve --port <free> --no-access-log *args`` until the block ends; yields ``http://127.0.0.1:<port>``.

    Waits until ``/health`` answers (200 or 503) within ``timeout_s`` seconds; the process
    group is terminated afterwards. The server's output goes to ``log_dir/api-<port>.log``
    and is quoted in the error when it exits or never answers.
    """
    port = free_port()
    log_path = Path(log_dir) / f"api-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([PE, "serve", "--port", str(port), "--no-access-log", *args], cwd=cwd, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pe serve exited {process.returncode}: {log_path.read_text()[-4000:]}")
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except urllib.error.HTTPError:  # 503: up, the database is not (yet)
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"pe serve did not answer in {timeout_s} s: {log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
