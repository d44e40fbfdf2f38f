"""A real ``faceflow serve`` process on 127.0.0.1 for the service tests (started, waited for, stopped)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_dirs() -> str:
    """Where the tests' servers find models without a download: FACEFLOW_MODELS, else the user's cache."""
    home = Path(os.environ.get("FACEFLOW_HOME") or Path.home() / ".cache" / "faceflow")
    return os.pathsep.join(p for p in (os.environ.get("FACEFLOW_MODELS"), str(home / "models")) if p)


def server_env(home: Path, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFLOW_SERVE_")}
    env.update({"FACEFLOW_HOME": str(home), "FACEFLOW_MODELS": model_dirs(), "FACEFLOW_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)})
    env.pop("FACEFLOW_GALLERY", None)
    for name, value in settings.items():
        env["FACEFLOW_SERVE_" + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass
class Server:
    """One running server: its URL, process and the log it wrote."""

    home: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    stdout: Path = field(default_factory=Path)
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client(self, key: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, verify=not self.tls,
                            **kwargs)  # type: ignore[arg-type]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(home: Path, *args: str, wait_ready: bool = True, tls: bool = False, **settings: object) -> Server:
    """``faceflow serve`` with ``FACEFLOW_HOME=home`` on a free port; waits for /readyz unless told not to."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / f"server-{port}.log"
    out = home / f"server-{port}.out"
    with open(log, "wb") as err, open(out, "wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "faceflow.cli", "serve", "--port", str(port), *args],
            env=server_env(home, **settings), stdout=stdout, stderr=err, cwd=str(home))
    server = Server(home, port, process, log, out, tls)
    deadline = time.monotonic() + START_TIMEOUT
    path = "/readyz" if wait_ready else "/healthz"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(server.url + path, timeout=2.0, verify=not tls).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready in {START_TIMEOUT} s:\n{server.logs()}")


def jpeg_bytes(image: np.ndarray, quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
