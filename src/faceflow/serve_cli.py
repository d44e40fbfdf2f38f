"""``faceflow serve`` (the REST service and web page) and ``faceflow keys create|list|revoke``.

Settings come from ``$FACEFLOW_HOME/serve.toml``, then ``FACEFLOW_SERVE_*`` variables, then these
flags (later ones win); ``--print-config`` shows the result with secrets redacted. The first start
with no API key makes an admin key and prints it once (only its hash is stored).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from faceflow.cli_base import ErrorExitGroup, console, warn
from faceflow.errors import ConfigError

keys_app = typer.Typer(cls=ErrorExitGroup, no_args_is_help=True,
                       help="Create, list and revoke the service's API keys (stored hashed).")

KeysPath = Annotated[Path | None, typer.Option("--keys-path", help="Key store (default: the serve settings' "
                                               "keys_path, else $FACEFLOW_HOME/keys.db).")]


def _require_serve() -> None:
    """A clear error naming the ``serve`` extra when its packages are missing."""
    from faceflow.extras import require

    for module in ("fastapi", "uvicorn", "pydantic_settings", "prometheus_client", "python_multipart"):
        require(module, "faceflow serve")


def _settings(**given: Any) -> Any:
    """The merged settings; flags not given (``None``) leave the file and the environment in charge."""
    _require_serve()
    from pydantic import ValidationError

    from faceflow.service.settings import ServeSettings

    try:
        return ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid serve settings: {problems}") from None


def _key_store(keys_path: Path | None) -> Any:
    from faceflow.service.keys import KeyStore

    return KeyStore(keys_path or _settings().resolved_keys_path())


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1); anything but loopback "
                                                  "needs --allow-remote.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    allow_remote: Annotated[bool | None, typer.Option("--allow-remote", help="Allow a non-loopback address "
                                                      "(use TLS: --ssl-certfile/--ssl-keyfile).")] = None,
    workers: Annotated[int | None, typer.Option(help="Server processes, each with its own models.")] = None,
    gallery_url: Annotated[str | None, typer.Option("--gallery-url", help="Gallery store: SQLite path or "
                                                    "postgresql:// URL.")] = None,
    keys_path: KeysPath = None,
    threads: Annotated[int | None, typer.Option(help="Images analysed at once per process.")] = None,
    queue_size: Annotated[int | None, typer.Option(help="Requests waiting beyond those running (503 "
                                                        "after).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds a request may take (504 after).")] = None,
    max_upload_bytes: Annotated[int | None, typer.Option(help="Largest request body (413 above).")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Largest image in pixels (422 above).")] = None,
    rate_limit: Annotated[float | None, typer.Option(help="Requests per second per key.")] = None,
    rate_burst: Annotated[int | None, typer.Option(help="Requests per key in a burst.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Allow this origin by CORS "
                                                          "(repeat; none: CORS off).")] = None,
    stages: Annotated[str | None, typer.Option(help="Default stages of /v1/analyze.")] = None,
    detector: Annotated[str | None, typer.Option(help="Default detector of /v1/analyze.")] = None,
    ssl_certfile: Annotated[str | None, typer.Option("--ssl-certfile", help="TLS certificate (uvicorn).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option("--ssl-keyfile", help="TLS key (uvicorn).")] = None,
    ssl_keyfile_password: Annotated[str | None, typer.Option("--ssl-keyfile-password",
                                                             help="TLS key password (uvicorn).")] = None,
    ssl_ca_certs: Annotated[str | None, typer.Option("--ssl-ca-certs", help="CA bundle (uvicorn).")] = None,
    ssl_cert_reqs: Annotated[int | None, typer.Option("--ssl-cert-reqs", help="Client certificates: 0 none, "
                                                      "1 optional, 2 required (uvicorn).")] = None,
    ssl_ciphers: Annotated[str | None, typer.Option("--ssl-ciphers", help="TLS ciphers (uvicorn).")] = None,
    log_level: Annotated[str | None, typer.Option(help="uvicorn log level.")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the merged settings (secrets "
                                               "redacted) and exit.")] = False,
) -> None:
    """Serve the REST API (/v1, OpenAPI at /docs) and the web page (/) on 127.0.0.1:8000."""
    settings = _settings(
        host=host, port=port, allow_remote=allow_remote, workers=workers, gallery_url=gallery_url,
        keys_path=keys_path, threads=threads, queue_size=queue_size, request_timeout=timeout,
        max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, rate_limit=rate_limit, rate_burst=rate_burst,
        cors_origins=cors_origin or None, stages=stages, detector=detector, ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile, ssl_keyfile_password=ssl_keyfile_password, ssl_ca_certs=ssl_ca_certs,
        ssl_cert_reqs=ssl_cert_reqs, ssl_ciphers=ssl_ciphers, log_level=log_level)
    if print_config:
        print(json.dumps(settings.redacted(), indent=2))
        return
    if not settings.loopback and not settings.allow_remote:
        raise ConfigError(f"binding to {settings.host} exposes the service beyond this machine: pass "
                          "--allow-remote (or allow_remote = true) to mean it")
    if not settings.loopback and not settings.tls:
        warn(f"serving on {settings.host} without TLS: API keys and photos cross the network in clear text "
             "(--ssl-certfile and --ssl-keyfile)")
    with _key_store(settings.keys_path) as keys:
        if keys.active_count() == 0:
            key, record = keys.create("admin (first start)", "admin")
            console.print(f"No API key existed: created admin key {record.id}. It is shown this once; only its "
                          "hash is stored:", markup=False)
            print(key, flush=True)
    run_server(settings)


def run_server(settings: Any) -> None:
    """Run uvicorn for ``settings`` (one process, or ``workers`` processes that re-read the settings)."""
    import uvicorn

    from faceflow.service.app import create_app

    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "timeout_graceful_shutdown": int(settings.request_timeout) + 5, "server_header": False,
    }
    for name in ("ssl_certfile", "ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs", "ssl_cert_reqs", "ssl_ciphers"):
        if getattr(settings, name) is not None:  # uvicorn's own defaults otherwise
            options[name] = getattr(settings, name)
    scheme = "https" if settings.tls else "http"
    console.print(f"faceflow serving on {scheme}://{settings.host}:{settings.port} (API docs at /docs)",
                  markup=False)
    if settings.workers > 1:
        os.environ.update(settings.to_environment())
        uvicorn.run("faceflow.service.app:app_from_environment", factory=True, workers=settings.workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name to tell the key by (who or what uses it).")],
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "read",
    gallery: Annotated[list[str] | None, typer.Option("--gallery", help="A gallery the key may touch (repeat); "
                                                      "none: all galleries.")] = None,
    keys_path: KeysPath = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    with _key_store(keys_path) as keys:
        key, record = keys.create(name, scope, gallery or None)
    console.print(f"created key {record.id} ({record.scope}); store it now, it is not shown again:", markup=False)
    print(key)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    keys_path: KeysPath = None,
) -> None:
    """List the keys (ids, names, scopes, galleries; never the keys themselves)."""
    from rich.table import Table

    with _key_store(keys_path) as keys:
        records = keys.list()
    if as_json:
        for r in records:
            print(json.dumps(r.to_dict()))
        return
    table = Table("id", "name", "scope", "galleries", "state")
    for r in records:
        table.add_row(r.id, escape(r.name), r.scope, "all" if r.galleries is None else escape(", ".join(r.galleries)),
                      "revoked" if r.revoked_at else "active")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from faceflow keys list).")],
    keys_path: KeysPath = None,
) -> None:
    """Revoke a key: it is refused from the next request on, in every running server."""
    with _key_store(keys_path) as keys:
        record = keys.revoke(key_id)
    console.print(f"revoked key {record.id} ({escape(record.name)})")
