"""``faceflow serve`` and ``faceflow keys``: settings precedence, first-start admin key, binding rules,
worker processes; the key store (hashes, scopes, revocation)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from faceflow.service.keys import KeyStore
from tests.service_server import free_port, server_env, start_server

pytest.importorskip("fastapi")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def faceflow(home: Path, *args: str, **settings: object) -> Ran:
    """The ``faceflow`` command in this process, with ``FACEFLOW_HOME=home`` and ``FACEFLOW_SERVE_*`` settings."""
    from typer.testing import CliRunner

    from faceflow.cli import app

    env = {k: v for k, v in server_env(home, **settings).items() if k.startswith("FACEFLOW_")}
    cleared = {k: None for k in os.environ if k.startswith("FACEFLOW_SERVE_") and k not in env}
    result = CliRunner().invoke(app, list(args), env={**cleared, **env})
    return Ran(result.exit_code, result.stdout, result.stderr)


# -- key store -----------------------------------------------------------------------------------


def test_keys_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "keys.db") as store:
        key, record = store.create("ci", "write", ["a", "b"])
        assert key.startswith(f"ff_{record.id}_")
        assert store.authenticate(key) == record
        assert store.authenticate(key) == record  # the remembered check agrees with scrypt's
        assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
        assert store.authenticate("ff_000000000000_" + key.split("_", 2)[2]) is None
        assert store.authenticate("") is None and store.authenticate(key + "x") is None
        assert record.allows("read") and record.allows("write") and not record.allows("admin")
        assert record.may_touch("a") and not record.may_touch("c")
    assert oct(os.stat(tmp_path / "keys.db").st_mode & 0o777) == "0o600"
    # the file holds a salted scrypt hash, never the key or its secret
    raw = (tmp_path / "keys.db").read_bytes()
    secret = key.split("_", 2)[2]
    assert secret.encode() not in raw and key.encode() not in raw
    with sqlite3.connect(tmp_path / "keys.db") as db:
        salt, stored = db.execute("SELECT salt, hash FROM api_keys").fetchone()
    assert len(salt) == 16 and stored == hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    with KeyStore(tmp_path / "keys.db") as other:  # a revocation from another store object (process)
        other.revoke(record.id)
    with KeyStore(tmp_path / "keys.db") as store:
        assert store.authenticate(key) is None
        assert store.active_count() == 0


def test_same_key_twice_gets_different_salts(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "keys.db") as store:
        store.create("a", "read")
        store.create("b", "read")
    with sqlite3.connect(tmp_path / "keys.db") as db:
        salts = [r[0] for r in db.execute("SELECT salt FROM api_keys")]
    assert len(set(salts)) == 2


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    made = faceflow(tmp_path, "keys", "create", "robot", "--scope", "write", "--gallery", "g1")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    key_id = key.split("_")[1]
    listed = faceflow(tmp_path, "keys", "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["name"], r["scope"], r["galleries"], r["revoked_at"]) for r in rows] == \
        [(key_id, "robot", "write", ["g1"], None)]
    assert key not in listed.stdout and key.split("_")[2] not in listed.stdout
    assert faceflow(tmp_path, "keys", "revoke", key_id).returncode == 0
    assert json.loads(faceflow(tmp_path, "keys", "list", "--json").stdout)["revoked_at"] is not None
    bad = faceflow(tmp_path, "keys", "create", "x", "--scope", "root")
    assert bad.returncode == 2 and "unknown scope 'root'" in bad.stderr
    assert faceflow(tmp_path, "keys", "revoke", "nope").returncode == 2


# -- settings --------------------------------------------------------------------------------------


def test_settings_file_then_environment_then_flags(tmp_path: Path) -> None:
    (tmp_path / "serve.toml").write_text('port = 9001\nthreads = 3\nrate_limit = 5.0\n'
                                         'ssl_keyfile_password = "hunter2"\ncors_origins = ["https://a.example"]\n')
    shown = faceflow(tmp_path, "serve", "--print-config", "--threads", "7", threads=5, rate_limit=9)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    assert config["port"] == 9001  # file
    assert config["rate_limit"] == 9.0  # environment over file
    assert config["threads"] == 7  # flag over environment
    assert config["cors_origins"] == ["https://a.example"]
    assert config["ssl_keyfile_password"] == "***" and "hunter2" not in shown.stdout
    assert config["keys_path"] == str(tmp_path / "keys.db")
    assert not (tmp_path / "keys.db").exists()  # printing the settings makes no key
    bad = faceflow(tmp_path, "serve", "--print-config", threads=0)
    assert bad.returncode == 2 and "threads" in bad.stderr
    bad = faceflow(tmp_path, "serve", "--print-config", "--stages", "detect,telepathy")
    assert bad.returncode == 2 and "unknown stage 'telepathy'" in bad.stderr
    bad = faceflow(tmp_path, "serve", "--print-config", verify_model="magic")
    assert bad.returncode == 2 and "unknown recognition model 'magic'" in bad.stderr


def test_non_loopback_needs_a_flag_and_warns_without_tls(tmp_path: Path) -> None:
    refused = faceflow(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "--allow-remote" in refused.stderr
    srv = start_server(tmp_path, "--host", "0.0.0.0", "--allow-remote", wait_ready=False, load_models=False)
    try:
        assert "without TLS" in srv.logs()
    finally:
        srv.stop()


def test_tls_options_pass_through_to_uvicorn(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a self-signed certificate)")
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key_file), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    srv = start_server(tmp_path, "--host", "0.0.0.0", "--allow-remote", "--ssl-certfile", str(cert),
                       "--ssl-keyfile", str(key_file), wait_ready=False, tls=True, load_models=False)
    try:
        assert httpx.get(srv.url + "/healthz", verify=False).json() == {"status": "ok"}
        with pytest.raises(httpx.TransportError):  # plain HTTP is not answered on a TLS port
            httpx.get(srv.url.replace("https", "http") + "/healthz", timeout=5)
        assert "without TLS" not in srv.logs()
    finally:
        srv.stop()


def test_first_start_makes_one_admin_key_and_prints_it_once(tmp_path: Path) -> None:
    srv = start_server(tmp_path, wait_ready=False, load_models=False)
    try:
        key = srv.stdout.read_text().splitlines()[0].strip()  # then uvicorn's access log
        assert key.startswith("ff_") and "admin key" in srv.logs()
        with srv.client(key) as c:
            me = c.get("/v1/me").json()
            assert me["scope"] == "admin" and me["galleries"] is None
            assert c.post("/v1/galleries", json={"name": "made-by-admin", "model": "sface"}).status_code == 201
    finally:
        srv.stop()
    assert key not in (tmp_path / "keys.db").read_bytes().decode("latin-1")
    again = start_server(tmp_path, wait_ready=False, load_models=False)
    try:
        assert not any(line.startswith("ff_") for line in again.stdout.read_text().splitlines())
        assert "admin key" not in again.logs()
    finally:
        again.stop()


def test_workers_run_separate_processes(tmp_path: Path) -> None:
    import psutil

    with KeyStore(tmp_path / "keys.db") as store:
        key = store.create("k", "read")[0]
    srv = start_server(tmp_path, "--workers", "2", wait_ready=False, load_models=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and srv.logs().count("Application startup complete") < 2:
            time.sleep(0.2)
        assert srv.logs().count("Application startup complete") == 2
        workers = [p for p in psutil.Process(srv.process.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2
        answers = [httpx.get(srv.url + "/v1/me", headers={"X-API-Key": key}, timeout=30) for _ in range(6)]
        assert all(r.status_code == 200 for r in answers)
    finally:
        srv.stop()
