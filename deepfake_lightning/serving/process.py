"""``deepfake serve`` in a child process, for scripts, notebooks, tests and benchmarks::

with ServerProcess(["--ckpt_path", "models/demo_v1"]) as server:
    requests.post(f"{server.url}/predict", data=open("photo.jpg", "rb"))
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """Runs ``deepfake serve ARGS --port PORT`` (a free port unless ``args`` name one) in its own process group,
    waits until ``GET /health`` answers 200 (raising with the server's log if it exits or ``startup_timeout``
    passes), and stops the whole group (API server and inference workers) on exit. ``log`` is its output so far."""

    def __init__(
        self,
        args: list[str],
        cwd: str | os.PathLike | None = None,
        startup_timeout: float = 180.0,
        env: dict | None = None,
    ):
        self.args = list(args)
        if "--port" not in self.args:
            self.args += ["--port", str(free_port())]
        self.port = int(self.args[self.args.index("--port") + 1])
        host = self.args[self.args.index("--host") + 1] if "--host" in self.args else "127.0.0.1"
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.port}"
        self.cwd, self.startup_timeout, self.env = cwd, startup_timeout, env
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="deepfake-serve-", suffix=".log", delete=False)

    @property
    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def start(self) -> ServerProcess:
        command = [sys.executable, "-m", "deepfake_lightning.cli", "serve", *self.args]
        self.process = subprocess.Popen(
            command,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(self.env or {})},
        )
        return self

    def wait_ready(self) -> ServerProcess:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"deepfake serve exited with status {self.process.returncode}:\n{self.log[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"deepfake serve not ready after {self.startup_timeout:.0f} s:\n{self.log[-4000:]}")

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl+C in the server's terminal (SIGINT to its process group); returns its exit status."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # the inference workers, should any outlive the server
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    def close(self) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.close()
