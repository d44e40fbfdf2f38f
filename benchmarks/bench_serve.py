"""Load on the REST service: concurrent clients posting the astronaut to /v1/analyze, against the library.

Starts ``faceflow serve`` on 127.0.0.1 (a fresh FACEFLOW_HOME, the models from the usual cache) with a
work pool of ``--threads``, then in the same run:

1. the in-process :class:`~faceflow.pipeline.Analyzer` with the same stages on the same JPEG bytes
   (decoding included), ``--threads`` threads sharing one analyser, for ``--library-seconds``;
2. ``--clients`` client threads (httpx, one connection each) posting the JPEG to ``/v1/analyze`` for
   ``--duration`` seconds: every status, latency percentiles, requests/s, the server's RSS at the
   start of the load and at its end;
3. the library again (the machine's load may have changed meanwhile; both figures are reported).

    nice .venv/bin/python benchmarks/bench_serve.py --duration 300 --json benchmarks/results/serve.json

The server and the clients share the machine: on a small one the clients' own CPU use counts against
the server, which is part of what is measured. The load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from _emit import emit_json  # benchmarks/_emit.py

REPO = Path(__file__).resolve().parents[1]


def astronaut_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def library_rate(stages: tuple[str, ...], image: bytes, threads: int, seconds: float) -> dict[str, float]:
    """Images per second of one shared Analyzer over ``threads`` threads (decode included)."""
    from faceflow.pipeline import Analyzer

    with Analyzer(stages=stages, workers=threads) as analyzer:
        analyzer.analyze(image)  # load the models
        done = [0] * threads
        stop = time.perf_counter() + seconds

        def loop(i: int) -> None:
            while time.perf_counter() < stop:
                analyzer.analyze(image)
                done[i] += 1

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(loop, range(threads)))
        elapsed = time.perf_counter() - t0
    return {"images": sum(done), "seconds": round(elapsed, 2), "images_per_s": round(sum(done) / elapsed, 3)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFLOW_SERVE_")}
    cache = Path(os.environ.get("FACEFLOW_HOME") or Path.home() / ".cache" / "faceflow") / "models"
    env.update({
        "FACEFLOW_HOME": str(home), "FACEFLOW_OFFLINE": "1",
        "FACEFLOW_MODELS": os.pathsep.join(p for p in (os.environ.get("FACEFLOW_MODELS"), str(cache)) if p),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p),
        "FACEFLOW_SERVE_THREADS": str(args.threads), "FACEFLOW_SERVE_QUEUE_SIZE": str(max(16, 2 * args.clients)),
        "FACEFLOW_SERVE_RATE_LIMIT": "100000", "FACEFLOW_SERVE_RATE_BURST": "100000",
        "FACEFLOW_SERVE_STAGES": args.stages, "FACEFLOW_SERVE_LOG_LEVEL": "warning",
    })
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "faceflow.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready")


def run_load(url: str, key: str, image: bytes, clients: int, seconds: float, server: psutil.Process
             ) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    rss_samples: list[float] = []

    def client(_: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/analyze", content=image, headers={"content-type": "image/jpeg"})
                    code = str(r.status_code)
                    ok = r.status_code == 200 and len(r.json()["faces"]) == 1
                except httpx.HTTPError as exc:
                    code, ok = type(exc).__name__, False
                dt = time.perf_counter() - t0
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1
                    if ok:
                        latencies.append(dt)
                    elif len(errors) < 10:
                        errors.append(code)

    def sample() -> None:
        while time.perf_counter() < stop:
            rss_samples.append(server.memory_info().rss / 2**20)
            time.sleep(1.0)

    rss_start = server.memory_info().rss / 2**20
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - t0
    sampler.join()
    rss_end = server.memory_info().rss / 2**20
    lat = np.array(latencies) * 1000
    total = sum(statuses.values())
    return {
        "requests": total, "ok": len(latencies), "errors": total - len(latencies), "statuses": statuses,
        "first_errors": errors, "seconds": round(elapsed, 1), "requests_per_s": round(len(latencies) / elapsed, 3),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p90": round(float(np.percentile(lat, 90)), 1),
                       "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(lat.max()), 1),
                       "mean": round(float(lat.mean()), 1)} if len(lat) else None,
        "server_rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1),
                          "max": round(max(rss_samples, default=rss_end), 1),
                          "growth": round((rss_end - rss_start) / rss_start, 4)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300.0, help="Seconds of load.")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="The server's work pool (and the library's threads).")
    parser.add_argument("--stages", default="detect,landmarks,pose,attributes")
    parser.add_argument("--library-seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=16, help="Requests before the measured load.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from faceflow.service.keys import KeyStore

    image = astronaut_jpeg()
    stages = tuple(args.stages.split(","))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="faceflow-bench-serve-") as tmp:
        home = Path(tmp)
        with KeyStore(home / "keys.db") as keys:
            key = keys.create("bench", "read")[0]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_server(home, port, args)
        try:
            wait_ready(url, process)
            server = psutil.Process(process.pid)
            library_before = library_rate(stages, image, args.threads, args.library_seconds)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
                for _ in range(args.warmup):
                    c.post("/v1/analyze", content=image).raise_for_status()
            load = run_load(url, key, image, args.clients, args.duration, server)
            metrics = httpx.get(url + "/metrics", timeout=10).text
            library_after = library_rate(stages, image, args.threads, args.library_seconds)
        finally:
            process.terminate()
            process.wait(60)
    library = statistics.mean([library_before["images_per_s"], library_after["images_per_s"]])
    figures = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "image": {"name": "skimage.data.astronaut", "format": "JPEG q92", "bytes": len(image), "size": [512, 512]},
        "stages": list(stages), "clients": args.clients, "server_threads": args.threads,
        "load": load,
        "library": {"before": library_before, "after": library_after, "images_per_s": round(library, 3)},
        "service_vs_library": round(load["requests_per_s"] / library, 3) if library else None,
        "queue_depth_metric_present": "faceflow_queue_depth" in metrics,
    }
    emit_json(figures, args.json)


if __name__ == "__main__":
    main()
