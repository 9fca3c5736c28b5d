"""Real servers for integration tests, bound to 127.0.0.1, stopped by PID (process group)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        name: str,
        command: list[str],
        health_url: str,
        env: dict | None = None,
        log_dir: Path | None = None,
        timeout: float = 90,
    ):
        self.name = name
        log_path = (log_dir or Path("/tmp")) / f"{name}-{os.getpid()}.log"
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(health_url, timeout=2) as answer:
                    if answer.status < 500:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{name} not healthy after {timeout}s; see {log_path}")

    def stop(self) -> None:
        stop_group(self.process, grace=15)
        self.log.close()


def stop_group(process: subprocess.Popen, *, grace: float) -> None:
    """SIGTERM the process group of `process` (started with start_new_session), SIGKILL after `grace` s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group of `process` at once (a crash, not a shutdown)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def wait_for(
    condition, process: subprocess.Popen, log: Path, what: str, timeout: float = 600, poll: float = 0.5
) -> None:
    """Poll real state until `condition()`; fail at once if `process` (a drainer) exits first, and
    kill its group if `what` does not come within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the drainer exited ({process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            kill_group(process)
            raise AssertionError(f"no {what} after {timeout} s:\n{log.read_text()[-4000:]}")
        time.sleep(poll)


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_moto(log_dir: Path) -> tuple[Server, str]:
    port = free_port()
    server = Server(
        "moto",
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}/moto-api/",
        log_dir=log_dir,
    )
    return server, f"http://127.0.0.1:{port}"


def start_mlflow(log_dir: Path, backend_uri: str, artifacts_destination: str, s3_endpoint: str) -> tuple[Server, str]:
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts_destination,
    ]
    env = {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = Server("mlflow", command, f"http://127.0.0.1:{port}/health", env=env, log_dir=log_dir, timeout=120)
    return server, f"http://127.0.0.1:{port}"


def prefect_env(home: Path) -> dict:
    """Environment of a Prefect process whose state (profiles, SQLite database) lives under `home`."""
    home = Path(home)
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


@contextmanager
def prefect_server(tmp_path: Path, *, timeout: float = 120) -> Iterator[str]:
    """A real `prefect server start` on 127.0.0.1 with its state under `tmp_path/prefect-server`.

    Yields the API URL (`http://127.0.0.1:PORT/api`); sets nothing in this process: give clients
    `PREFECT_API_URL=<url>` (subprocess env, `monkeypatch.setenv`, or `prefect.settings.temporary_settings`).
    The server's process group is stopped on exit, whatever happened inside.
    """
    home = Path(tmp_path) / "prefect-server"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**prefect_env(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    server = Server(
        "prefect",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/api/health",
        env=env,
        log_dir=home,
        timeout=timeout,
    )
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        server.stop()
