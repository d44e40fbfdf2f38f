"""A throw-away PostgreSQL server with pgvector, for tests and benchmarks (never for real data).

Tried in order: the ``pgserver`` package (PostgreSQL 16 and pgvector inside a wheel; as root it
runs the server as a system user ``pgserver`` it creates), then Debian's binaries
(``apt-get install postgresql-15 postgresql-15-pgvector``; as root they run as ``postgres``). The
server listens on a Unix socket in a temporary folder only, and is stopped and deleted at exit.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from faceflow.errors import GalleryError

_URL: list[str] = []


def _pgserver() -> str:
    folder = Path(tempfile.mkdtemp(prefix="faceflow-pgserver-"))
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(folder / "data", cleanup_mode="delete")  # type: ignore[attr-defined]
    atexit.register(shutil.rmtree, folder, True)
    return str(server.get_uri())


def _debian() -> str:
    pg_ctls = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if not pg_ctls:
        raise RuntimeError("no /usr/lib/postgresql/*/bin/pg_ctl (apt-get install postgresql-15 postgresql-15-pgvector)")
    bindir = Path(pg_ctls[-1]).parent
    version = bindir.parts[4]
    if not Path(f"/usr/share/postgresql/{version}/extension/vector.control").exists():
        raise RuntimeError(f"PostgreSQL {version} has no pgvector (apt-get install postgresql-{version}-pgvector)")
    folder = Path(tempfile.mkdtemp(prefix="faceflow-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                    f"-k {folder} -c listen_addresses=''", "start"], check=True, capture_output=True)

    def stop() -> None:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@/postgres?host={folder}"


def temporary_postgres() -> str:
    """A superuser URL of a running throw-away server (one per process); :class:`GalleryError` if none starts."""
    if not _URL:
        reasons = []
        for name, start in (("pgserver", _pgserver), ("Debian PostgreSQL", _debian)):
            try:
                _URL.append(start())
                break
            except Exception as exc:  # any failure means: try the next way
                reasons.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            raise GalleryError("no PostgreSQL server could be started: " + "; ".join(reasons))
    return _URL[0]


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
