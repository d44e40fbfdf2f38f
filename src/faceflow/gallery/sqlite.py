"""SQLite backend: one file, WAL journal, one transaction per write, schema versioned by migrations.

Many readers and one writer may use the file at once (processes or threads): readers see the last
committed state, a writer waits up to :data:`BUSY_TIMEOUT_MS` for another. A process killed in the
middle of a write leaves the file as it was before that write. Embeddings are little-endian
float32 BLOBs.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceflow.errors import GalleryError, StoreDamaged, StoreUnavailable
from faceflow.gallery.store import GalleryInfo, GalleryStore
from faceflow.types import FloatArray

BUSY_TIMEOUT_MS = 60_000

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the initial schema
        """CREATE TABLE galleries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            threshold REAL,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            revision INTEGER NOT NULL DEFAULT 0,
            reset_revision INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE subjects (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            UNIQUE (gallery_id, name))""",
        """CREATE TABLE faces (
            id INTEGER PRIMARY KEY,
            gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
            subject_id INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
            box TEXT,
            quality REAL,
            source TEXT,
            source_sha256 TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL)""",
        "CREATE INDEX faces_gallery_subject ON faces (gallery_id, subject_id)",
        """CREATE TABLE embeddings (
            face_id INTEGER NOT NULL REFERENCES faces(id) ON DELETE CASCADE,
            gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
            subject_id INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            UNIQUE (face_id, model))""",
        "CREATE INDEX embeddings_gallery_model ON embeddings (gallery_id, model, subject_id, face_id)",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO counters VALUES ('face_id', 0)",
    ),
    (  # 2: find a gallery's faces by source photo (idempotent enrolment, faceflow.distributed)
        "CREATE INDEX faces_gallery_source ON faces (gallery_id, source)",
    ),
    (  # 3: a gallery's faces in id order, page by page (clustering at scale, faceflow.distributed)
        "CREATE INDEX embeddings_gallery_model_face ON embeddings (gallery_id, model, face_id)",
    ),
    (  # 4: find a gallery's faces by photo content (an enrolment retried stores its photo once)
        "CREATE INDEX faces_gallery_sha ON faces (gallery_id, source_sha256)",
    ),
)
"""Schema migrations: entry ``i`` takes the schema from version ``i`` to ``i + 1`` (``PRAGMA user_version``)."""

_GALLERY_COLUMNS = """g.id, g.name, g.model, g.dim, g.threshold, g.metadata, g.created_at, g.revision,
    g.reset_revision, (SELECT COUNT(*) FROM subjects s WHERE s.gallery_id = g.id),
    (SELECT COUNT(*) FROM faces f WHERE f.gallery_id = g.id)"""
_SUBJECT_COLUMNS = "s.id, s.name, s.metadata, s.created_at, (SELECT COUNT(*) FROM faces f WHERE f.subject_id = s.id)"
_IDS = "(SELECT value FROM json_each(?))"

SQL: dict[str, str] = {
    "bump_revision": """UPDATE galleries SET revision = revision + 1,
        reset_revision = CASE WHEN ? THEN revision + 1 ELSE reset_revision END WHERE id = ?""",
    "gallery_by_name": f"SELECT {_GALLERY_COLUMNS} FROM galleries g WHERE g.name = ?",
    "gallery_head": """SELECT id, name, model, dim, threshold, metadata, created_at, revision, reset_revision, -1, -1
        FROM galleries WHERE name = ?""",
    "list_galleries": f"SELECT {_GALLERY_COLUMNS} FROM galleries g ORDER BY g.name",
    "insert_gallery": """INSERT INTO galleries (name, model, dim, threshold, metadata, created_at)
        VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING RETURNING id""",
    "update_gallery_settings": "UPDATE galleries SET threshold = ?, metadata = ? WHERE id = ?",
    "delete_gallery_embeddings": "DELETE FROM embeddings WHERE gallery_id = ?",
    "delete_gallery_faces": "DELETE FROM faces WHERE gallery_id = ?",
    "delete_gallery_subjects": "DELETE FROM subjects WHERE gallery_id = ?",
    "delete_gallery": "DELETE FROM galleries WHERE id = ?",
    "subject_by_name": f"SELECT {_SUBJECT_COLUMNS} FROM subjects s WHERE s.gallery_id = ? AND s.name = ?",
    "list_subjects": f"SELECT {_SUBJECT_COLUMNS} FROM subjects s WHERE s.gallery_id = ? ORDER BY s.name",
    "insert_subject": "INSERT INTO subjects (gallery_id, name, metadata, created_at) VALUES (?, ?, ?, ?)",
    "insert_subject_if_new": """INSERT INTO subjects (gallery_id, name, metadata, created_at) VALUES (?, ?, ?, ?)
        ON CONFLICT (gallery_id, name) DO NOTHING""",
    "subject_ids": f"SELECT id, name FROM subjects WHERE gallery_id = ? AND name IN {_IDS}",
    "subject_names": """SELECT s.id, s.name FROM subjects s WHERE s.id IN (SELECT value FROM json_each(?2))
        AND +s.gallery_id = (SELECT id FROM galleries WHERE name = ?1)""",
    "face_subjects": f"SELECT id, subject_id FROM faces WHERE gallery_id = ? AND id IN {_IDS}",
    "delete_subject_embeddings": "DELETE FROM embeddings WHERE face_id IN (SELECT id FROM faces WHERE subject_id = ?)",
    "delete_subject_faces": "DELETE FROM faces WHERE subject_id = ?",
    "delete_subject": "DELETE FROM subjects WHERE id = ?",
    "reserve_face_ids": "UPDATE counters SET value = value + ? WHERE name = 'face_id' RETURNING value",
    "insert_face": """INSERT INTO faces (id, gallery_id, subject_id, box, quality, source, source_sha256, metadata,
        created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
    "insert_embedding": """INSERT INTO embeddings (face_id, gallery_id, subject_id, model, dim, vector)
        VALUES (?, ?, ?, ?, ?, ?)""",
    "list_faces": """SELECT f.id, f.subject_id, s.name, f.box, f.quality, f.source, f.source_sha256, f.metadata,
        f.created_at FROM faces f JOIN subjects s ON s.id = f.subject_id
        WHERE f.gallery_id = ? AND (? IS NULL OR f.subject_id = ?) ORDER BY f.id""",
    "count_faces_in": f"SELECT COUNT(*) FROM faces WHERE gallery_id = ? AND id IN {_IDS}",
    "lock_gallery": "SELECT ? + ?",  # BEGIN IMMEDIATE already serialises writers
    "sources_in": f"SELECT source, source_sha256 FROM faces WHERE gallery_id = ? AND source IN {_IDS}",
    "faces_of_photos": f"""SELECT s.name, f.source_sha256, f.id FROM faces f JOIN subjects s ON s.id = f.subject_id
        WHERE f.gallery_id = ? AND f.source_sha256 IN {_IDS} ORDER BY f.id""",
    "delete_embeddings_in": f"DELETE FROM embeddings WHERE gallery_id = ? AND face_id IN {_IDS}",
    "delete_faces_in": f"DELETE FROM faces WHERE gallery_id = ? AND id IN {_IDS}",
    "vectors": """SELECT face_id, subject_id, vector FROM embeddings WHERE gallery_id = ? AND model = ?
        ORDER BY subject_id, face_id""",
    "vectors_of_subjects": f"""SELECT face_id, subject_id, vector FROM embeddings WHERE gallery_id = ? AND model = ?
        AND subject_id IN {_IDS} ORDER BY subject_id, face_id""",
    "face_page": """SELECT e.face_id, s.name, f.source FROM embeddings e JOIN faces f ON f.id = e.face_id
        JOIN subjects s ON s.id = f.subject_id WHERE e.gallery_id = ? AND e.model = ? AND e.face_id > ?
        ORDER BY e.face_id LIMIT ?""",
    "vectors_of_faces": f"""SELECT e.face_id, e.vector, f.source FROM embeddings e JOIN faces f ON f.id = e.face_id
        WHERE e.gallery_id = ? AND e.model = ? AND e.face_id IN {_IDS} ORDER BY e.face_id""",
    "model_dims": "SELECT dim FROM embeddings WHERE gallery_id = ? AND model = ? LIMIT 1",
    "model_counts": "SELECT model, COUNT(*) FROM embeddings WHERE gallery_id = ? GROUP BY model ORDER BY model",
    "delete_model_embeddings_in": f"DELETE FROM embeddings WHERE gallery_id = ? AND model = ? AND face_id IN {_IDS}",
    "switch_model": "UPDATE galleries SET model = ?, dim = ?, threshold = NULL WHERE id = ?",
    "delete_other_models": "DELETE FROM embeddings WHERE gallery_id = ? AND model <> ?",
    "faces_without_embedding": """SELECT COUNT(*) FROM faces f WHERE f.gallery_id = ? AND NOT EXISTS
        (SELECT 1 FROM embeddings e WHERE e.face_id = f.id AND e.model = ?)""",
    "embeddings_wrong_dim": """SELECT COUNT(*) FROM embeddings WHERE gallery_id = ? AND model = ?
        AND (dim <> ? OR length(vector) <> 4 * dim)""",
    "faces_wrong_subject": """SELECT (SELECT COUNT(*) FROM faces f JOIN subjects s ON s.id = f.subject_id
        WHERE f.gallery_id = ? AND s.gallery_id <> f.gallery_id) + (SELECT COUNT(*) FROM embeddings e
        JOIN faces f ON f.id = e.face_id WHERE e.gallery_id = ? AND e.subject_id <> f.subject_id)""",
    "orphan_embeddings": """SELECT COUNT(*) FROM embeddings e WHERE e.gallery_id = ?
        AND NOT EXISTS (SELECT 1 FROM faces f WHERE f.id = e.face_id AND f.gallery_id = e.gallery_id)""",
}


def _store_error(exc: sqlite3.DatabaseError, where: str) -> StoreUnavailable:
    """A damaged file (not a database, malformed pages) vs a file that cannot be used now (locked, no access)."""
    text = str(exc)
    damaged = not isinstance(exc, sqlite3.OperationalError) or "malformed" in text or "not a database" in text
    if "locked" in text or "busy" in text:
        text += f" (waited {BUSY_TIMEOUT_MS / 1000:g} s for another connection's write to end)"
    return (StoreDamaged if damaged else StoreUnavailable)(f"{where}: {text}")


class SQLiteStore(GalleryStore):
    """A gallery store in one SQLite file (``":memory:"`` for a private, temporary one)."""

    SQL = SQL

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        memory = self.path == ":memory:"
        if not memory:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file in the way, no permission: the store is unavailable, not a crash
                raise StoreUnavailable(f"cannot create the folder of gallery store {self.path}: {exc}") from exc
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not memory:
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except GalleryError:
            self._conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            raise _store_error(exc, f"cannot open gallery store {self.path}") from exc

    def _migrate(self) -> None:
        """Bring the schema up to date. One already up to date is only read, so that opening the store
        never waits for another process's write (readers and a writer share a WAL file)."""
        if self.schema_version == len(MIGRATIONS):
            return
        with self.transaction():  # under the write lock: another process may have migrated meanwhile
            version = self.schema_version
            if version > len(MIGRATIONS):
                raise StoreUnavailable(
                    f"{self.path} has schema version {version}, newer than this faceflow knows ({len(MIGRATIONS)})"
                )
            for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {target}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def _begin(self, write: bool) -> None:
        self._run("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")  # a writer waits here: errors typed by _run

    def _end(self, commit: bool) -> None:
        if self._conn.in_transaction:
            self._run("COMMIT" if commit else "ROLLBACK")

    def _run(self, sql: str, params: Sequence[Any] = (), *, many: bool = False) -> list[tuple[Any, ...]]:
        try:
            if many:
                self._conn.executemany(sql, params)
                return []
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.IntegrityError as exc:
            raise GalleryError(f"refused by the store: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise _store_error(exc, f"gallery store {self.path}") from exc

    def _vec_param(self, vector: FloatArray) -> bytes:
        return np.asarray(vector, dtype="<f4").tobytes()

    def _decode_vectors(self, values: Sequence[Any], dim: int) -> FloatArray:
        return np.frombuffer(b"".join(values), dtype="<f4").astype(np.float32).reshape(-1, dim)

    def _list_param(self, values: Sequence[Any]) -> str:
        return json.dumps(list(values))

    def _reserve_face_ids(self, n: int) -> list[int]:
        last = int(self._q("reserve_face_ids", n)[0][0])
        return list(range(last - n + 1, last + 1))

    def _integrity_problems(self) -> list[str]:
        problems = [r[0] for r in self._conn.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
        problems += [f"foreign key broken: {r}" for r in self._conn.execute("PRAGMA foreign_key_check").fetchall()]
        return problems

    def index_dir(self) -> Path | None:
        return None if self.path == ":memory:" else Path(self.path + ".indexes")

    def _on_gallery_deleted(self, gallery: GalleryInfo) -> None:
        folder = self.index_dir()
        if folder is not None and folder.is_dir():
            for f in folder.glob(f"g{gallery.id}.*"):
                f.unlink(missing_ok=True)
