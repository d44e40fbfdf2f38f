"""PostgreSQL backend with pgvector: same schema and API as SQLite, HNSW search inside the database.

Tables live in the schema ``faceflow`` (so a shared database is not cluttered); embeddings are
pgvector ``vector`` values, sent and read in binary (float32, exact). A gallery that reaches the ANN
size gets a partial HNSW index of its own (inner product over the gallery's model), built by the
first search that finds it that big (minutes for a million faces, while writes to the table wait)
and from then on kept up to date by PostgreSQL on every insert. Needs the ``vector`` extension,
created on first use (which takes a role allowed to create it, or an administrator having done
``CREATE EXTENSION vector`` before).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from faceflow.errors import GalleryError, StoreUnavailable
from faceflow.extras import require
from faceflow.gallery.store import GalleryInfo, GalleryStore, VectorSet
from faceflow.types import FloatArray

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
"""pgvector's HNSW build settings, as for SQLite's usearch graph (see ``search.HNSW_CONNECTIVITY``):
pgvector's defaults (16, 64) found the planted match of 1M random 128-d vectors in 63 % of queries."""
MAX_EF_SEARCH = 1000
"""pgvector's largest ``hnsw.ef_search``: an HNSW scan returns at most this many rows."""
INDEX_BUILD_MEMORY = "2GB"
"""``maintenance_work_mem`` while building an HNSW index (a 1M x 128 index fits; then it builds in memory)."""
LOCK_TIMEOUT_MS = 60_000
"""How long a statement waits for a lock another connection holds (an index build, another writer, an
administrator's LOCK TABLE) before failing with StoreUnavailable, as SQLite's busy timeout; set as the
session's ``lock_timeout`` unless the server or the URL's ``options`` set one already."""
_LOCK_KEY = 0x66616365  # advisory lock held while migrating

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the initial schema
        "CREATE EXTENSION IF NOT EXISTS vector",
        """CREATE TABLE faceflow.galleries (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            threshold DOUBLE PRECISION,
            metadata JSONB NOT NULL DEFAULT '{}',
            created_at DOUBLE PRECISION NOT NULL,
            revision BIGINT NOT NULL DEFAULT 0,
            reset_revision BIGINT NOT NULL DEFAULT 0)""",
        """CREATE TABLE faceflow.subjects (
            id BIGSERIAL PRIMARY KEY,
            gallery_id BIGINT NOT NULL REFERENCES faceflow.galleries(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            metadata JSONB NOT NULL DEFAULT '{}',
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (gallery_id, name))""",
        "CREATE SEQUENCE faceflow.faces_id_seq",
        """CREATE TABLE faceflow.faces (
            id BIGINT PRIMARY KEY,
            gallery_id BIGINT NOT NULL REFERENCES faceflow.galleries(id) ON DELETE CASCADE,
            subject_id BIGINT NOT NULL REFERENCES faceflow.subjects(id) ON DELETE CASCADE,
            box JSONB,
            quality DOUBLE PRECISION,
            source TEXT,
            source_sha256 TEXT,
            metadata JSONB NOT NULL DEFAULT '{}',
            created_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX faces_gallery_subject ON faceflow.faces (gallery_id, subject_id)",
        """CREATE TABLE faceflow.embeddings (
            face_id BIGINT NOT NULL REFERENCES faceflow.faces(id) ON DELETE CASCADE,
            gallery_id BIGINT NOT NULL REFERENCES faceflow.galleries(id) ON DELETE CASCADE,
            subject_id BIGINT NOT NULL REFERENCES faceflow.subjects(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector vector NOT NULL,
            PRIMARY KEY (face_id, model))""",
        "CREATE INDEX embeddings_gallery_model ON faceflow.embeddings (gallery_id, model, subject_id, face_id)",
    ),
    (  # 2: find a gallery's faces by source photo (idempotent enrolment, faceflow.distributed)
        "CREATE INDEX faces_gallery_source ON faceflow.faces (gallery_id, source)",
    ),
    (  # 3: a gallery's faces in id order, page by page (clustering at scale, faceflow.distributed)
        "CREATE INDEX embeddings_gallery_model_face ON faceflow.embeddings (gallery_id, model, face_id)",
    ),
    (  # 4: find a gallery's faces by photo content (an enrolment retried stores its photo once)
        "CREATE INDEX faces_gallery_sha ON faceflow.faces (gallery_id, source_sha256)",
    ),
)
"""Schema migrations: entry ``i`` takes the schema from version ``i`` to ``i + 1`` (``faceflow.schema_version``)."""

_GALLERY_COLUMNS = """g.id, g.name, g.model, g.dim, g.threshold, g.metadata, g.created_at, g.revision,
    g.reset_revision, (SELECT COUNT(*) FROM faceflow.subjects s WHERE s.gallery_id = g.id),
    (SELECT COUNT(*) FROM faceflow.faces f WHERE f.gallery_id = g.id)"""
_SUBJECT_COLUMNS = """s.id, s.name, s.metadata, s.created_at,
    (SELECT COUNT(*) FROM faceflow.faces f WHERE f.subject_id = s.id)"""

SQL: dict[str, str] = {
    "bump_revision": """UPDATE faceflow.galleries SET revision = revision + 1,
        reset_revision = CASE WHEN %s THEN revision + 1 ELSE reset_revision END WHERE id = %s""",
    "gallery_by_name": f"SELECT {_GALLERY_COLUMNS} FROM faceflow.galleries g WHERE g.name = %s",
    "gallery_head": """SELECT id, name, model, dim, threshold, metadata, created_at, revision, reset_revision, -1, -1
        FROM faceflow.galleries WHERE name = %s""",
    "list_galleries": f"SELECT {_GALLERY_COLUMNS} FROM faceflow.galleries g ORDER BY g.name",
    "insert_gallery": """INSERT INTO faceflow.galleries (name, model, dim, threshold, metadata, created_at)
        VALUES (%s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT (name) DO NOTHING RETURNING id""",
    "update_gallery_settings": "UPDATE faceflow.galleries SET threshold = %s, metadata = %s::jsonb WHERE id = %s",
    "delete_gallery_embeddings": "DELETE FROM faceflow.embeddings WHERE gallery_id = %s",
    "delete_gallery_faces": "DELETE FROM faceflow.faces WHERE gallery_id = %s",
    "delete_gallery_subjects": "DELETE FROM faceflow.subjects WHERE gallery_id = %s",
    "delete_gallery": "DELETE FROM faceflow.galleries WHERE id = %s",
    "subject_by_name": f"SELECT {_SUBJECT_COLUMNS} FROM faceflow.subjects s WHERE s.gallery_id = %s AND s.name = %s",
    "list_subjects": f"SELECT {_SUBJECT_COLUMNS} FROM faceflow.subjects s WHERE s.gallery_id = %s ORDER BY s.name",
    "insert_subject": """INSERT INTO faceflow.subjects (gallery_id, name, metadata, created_at)
        VALUES (%s, %s, %s::jsonb, %s)""",
    "insert_subject_if_new": """INSERT INTO faceflow.subjects (gallery_id, name, metadata, created_at)
        VALUES (%s, %s, %s::jsonb, %s) ON CONFLICT (gallery_id, name) DO NOTHING""",
    "subject_ids": "SELECT id, name FROM faceflow.subjects WHERE gallery_id = %s AND name = ANY(%s::text[])",
    "subject_names": """SELECT s.id, s.name FROM faceflow.subjects s JOIN faceflow.galleries g ON g.id = s.gallery_id
        WHERE g.name = %s AND s.id = ANY(%s::bigint[])""",
    "face_subjects": "SELECT id, subject_id FROM faceflow.faces WHERE gallery_id = %s AND id = ANY(%s::bigint[])",
    "delete_subject_embeddings": """DELETE FROM faceflow.embeddings
        WHERE face_id IN (SELECT id FROM faceflow.faces WHERE subject_id = %s)""",
    "delete_subject_faces": "DELETE FROM faceflow.faces WHERE subject_id = %s",
    "delete_subject": "DELETE FROM faceflow.subjects WHERE id = %s",
    "reserve_face_ids": "SELECT nextval('faceflow.faces_id_seq') FROM generate_series(1, %s)",
    "insert_face": """INSERT INTO faceflow.faces (id, gallery_id, subject_id, box, quality, source, source_sha256,
        metadata, created_at) VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s::jsonb, %s)""",
    "insert_embedding": """INSERT INTO faceflow.embeddings (face_id, gallery_id, subject_id, model, dim, vector)
        VALUES (%s, %s, %s, %s, %s, %s)""",
    "list_faces": """SELECT f.id, f.subject_id, s.name, f.box, f.quality, f.source, f.source_sha256, f.metadata,
        f.created_at FROM faceflow.faces f JOIN faceflow.subjects s ON s.id = f.subject_id
        WHERE f.gallery_id = %s AND (%s::bigint IS NULL OR f.subject_id = %s) ORDER BY f.id""",
    "count_faces_in": "SELECT COUNT(*) FROM faceflow.faces WHERE gallery_id = %s AND id = ANY(%s::bigint[])",
    "delete_embeddings_in": "DELETE FROM faceflow.embeddings WHERE gallery_id = %s AND face_id = ANY(%s::bigint[])",
    "delete_faces_in": "DELETE FROM faceflow.faces WHERE gallery_id = %s AND id = ANY(%s::bigint[])",
    "vectors": """SELECT face_id, subject_id, vector FROM faceflow.embeddings WHERE gallery_id = %s AND model = %s
        ORDER BY subject_id, face_id""",
    "vectors_of_subjects": """SELECT face_id, subject_id, vector FROM faceflow.embeddings
        WHERE gallery_id = %s AND model = %s AND subject_id = ANY(%s::bigint[]) ORDER BY subject_id, face_id""",
    "face_page": """SELECT e.face_id, s.name, f.source FROM faceflow.embeddings e
        JOIN faceflow.faces f ON f.id = e.face_id JOIN faceflow.subjects s ON s.id = f.subject_id
        WHERE e.gallery_id = %s AND e.model = %s AND e.face_id > %s ORDER BY e.face_id LIMIT %s""",
    "vectors_of_faces": """SELECT e.face_id, e.vector, f.source FROM faceflow.embeddings e
        JOIN faceflow.faces f ON f.id = e.face_id WHERE e.gallery_id = %s AND e.model = %s
        AND e.face_id = ANY(%s::bigint[]) ORDER BY e.face_id""",
    "model_dims": "SELECT dim FROM faceflow.embeddings WHERE gallery_id = %s AND model = %s LIMIT 1",
    "model_counts": """SELECT model, COUNT(*) FROM faceflow.embeddings WHERE gallery_id = %s
        GROUP BY model ORDER BY model""",
    "delete_model_embeddings_in": """DELETE FROM faceflow.embeddings WHERE gallery_id = %s AND model = %s
        AND face_id = ANY(%s::bigint[])""",
    "switch_model": "UPDATE faceflow.galleries SET model = %s, dim = %s, threshold = NULL WHERE id = %s",
    "delete_other_models": "DELETE FROM faceflow.embeddings WHERE gallery_id = %s AND model <> %s",
    "faces_without_embedding": """SELECT COUNT(*) FROM faceflow.faces f WHERE f.gallery_id = %s AND NOT EXISTS
        (SELECT 1 FROM faceflow.embeddings e WHERE e.face_id = f.id AND e.model = %s)""",
    "embeddings_wrong_dim": """SELECT COUNT(*) FROM faceflow.embeddings WHERE gallery_id = %s AND model = %s
        AND (dim <> %s OR vector_dims(vector) <> dim)""",
    "faces_wrong_subject": """SELECT (SELECT COUNT(*) FROM faceflow.faces f JOIN faceflow.subjects s
        ON s.id = f.subject_id WHERE f.gallery_id = %s AND s.gallery_id <> f.gallery_id) + (SELECT COUNT(*)
        FROM faceflow.embeddings e JOIN faceflow.faces f ON f.id = e.face_id
        WHERE e.gallery_id = %s AND e.subject_id <> f.subject_id)""",
    "orphan_embeddings": """SELECT COUNT(*) FROM faceflow.embeddings e WHERE e.gallery_id = %s AND NOT EXISTS
        (SELECT 1 FROM faceflow.faces f WHERE f.id = e.face_id AND f.gallery_id = e.gallery_id)""",
    # -- pgvector: templates with {index}, {dim}, {gallery}, {model} filled in by psycopg.sql --------
    "create_hnsw": """CREATE INDEX IF NOT EXISTS {index} ON faceflow.embeddings
        USING hnsw ((vector::vector({dim})) vector_ip_ops) WITH (m = {m}, ef_construction = {ef})
        WHERE gallery_id = {gallery} AND model = {model}""",
    "drop_hnsw": "DROP INDEX IF EXISTS faceflow.{index}",
    "hnsw_exists": "SELECT to_regclass('faceflow.' || {index_name}) IS NOT NULL",
    "ann": """SELECT face_id, subject_id, vector FROM faceflow.embeddings WHERE gallery_id = {gallery}
        AND model = {model} ORDER BY vector::vector({dim}) <#> %s::vector({dim}) LIMIT %s""",
    # each query face's k nearest (HNSW, inside the server), those at or above a similarity kept
    "similar_knn": """SELECT q.face_id, n.face_id FROM faceflow.embeddings q CROSS JOIN LATERAL (
            SELECT e.face_id, -(e.vector::vector({dim}) <#> q.vector::vector({dim})) AS sim
            FROM faceflow.embeddings e WHERE e.gallery_id = {gallery} AND e.model = {model}
            ORDER BY e.vector::vector({dim}) <#> q.vector::vector({dim}) LIMIT %s) n
        WHERE q.gallery_id = {gallery} AND q.model = {model} AND q.face_id = ANY(%s::bigint[]) AND n.sim >= %s""",
    # every face at or above a similarity (exact: a scan of the gallery per query face)
    "similar_all": """SELECT q.face_id, e.face_id FROM faceflow.embeddings q JOIN faceflow.embeddings e
        ON e.gallery_id = {gallery} AND e.model = {model}
        WHERE q.gallery_id = {gallery} AND q.model = {model} AND q.face_id = ANY(%s::bigint[])
        AND -(e.vector::vector({dim}) <#> q.vector::vector({dim})) >= %s""",
    "schema_version": "SELECT version FROM faceflow.schema_version",
    # the two-key form takes int4 keys: a gallery id past 2^31 folds onto one (a shared lock only serialises)
    "lock_gallery": "SELECT pg_advisory_xact_lock(%s::int, mod(%s::bigint, 2147483647)::int)",
    "sources_in": """SELECT source, source_sha256 FROM faceflow.faces WHERE gallery_id = %s
        AND source = ANY(%s::text[])""",
    "faces_of_photos": """SELECT s.name, f.source_sha256, f.id FROM faceflow.faces f
        JOIN faceflow.subjects s ON s.id = f.subject_id
        WHERE f.gallery_id = %s AND f.source_sha256 = ANY(%s::text[]) ORDER BY f.id""",
    "lock": "SELECT pg_advisory_xact_lock(%s)",
}


def _ef_for(k: int) -> int:
    """``hnsw.ef_search`` for a search of the ``k`` nearest: twice ``k`` (at least 100) for recall, at
    most :data:`MAX_EF_SEARCH` (and never below ``k``: the scan returns at most ``ef_search`` rows)."""
    return min(max(2 * int(k), 100), MAX_EF_SEARCH)


def _vector_adapters(oid: int) -> tuple[type, type]:
    """psycopg binary dumper (numpy array -> vector) and loader (vector -> float32 array) for ``oid``."""
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format

    class VectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Any) -> bytes:
            a = np.asarray(obj, dtype=">f4").reshape(-1)
            return struct.pack(">HH", a.size, 0) + a.tobytes()

    class VectorLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> FloatArray:
            dim = struct.unpack_from(">H", data)[0]
            return np.frombuffer(bytes(data), dtype=">f4", count=dim, offset=4).astype(np.float32)

    VectorDumper.oid = oid
    return VectorDumper, VectorLoader


class PostgresStore(GalleryStore):
    """A gallery store in a PostgreSQL database with pgvector (``postgresql://user@host:port/db``)."""

    SQL = SQL

    def __init__(self, url: str) -> None:
        super().__init__()
        psycopg = require("psycopg", "the PostgreSQL gallery backend")
        self.url = url
        self._psycopg = psycopg
        self._ef = 0
        self._ann_sql: dict[tuple[int, str, int], Any] = {}
        try:
            self._conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to {self.shown_url}: {exc}") from exc
        if self._conn.execute("SHOW lock_timeout").fetchone()[0] == "0":  # 0: wait for ever
            self._conn.execute(f"SET lock_timeout = {int(LOCK_TIMEOUT_MS)}")
        self._lock_timeout = str(self._conn.execute("SHOW lock_timeout").fetchone()[0])
        self._migrate()
        oid = self._conn.execute("SELECT 'vector'::regtype::oid").fetchone()[0]
        dumper, loader = _vector_adapters(int(oid))
        self._conn.adapters.register_dumper(np.ndarray, dumper)
        self._conn.adapters.register_loader(int(oid), loader)

    def _migrate(self) -> None:
        """Bring the schema up to date. One already up to date is only read, so that a role that may
        only read the tables can open the store (migrating creates the schema and writes its version)."""
        psycopg = self._psycopg
        try:
            row = self._conn.execute("SELECT version FROM faceflow.schema_version").fetchone()
        except psycopg.errors.ProgrammingError:  # no schema or table yet, or not readable: migrate (or say why not)
            row = None
        if row is not None and int(row[0]) == len(MIGRATIONS):
            return
        try:
            with self.transaction():
                self._q("lock", _LOCK_KEY)
                self._run("CREATE SCHEMA IF NOT EXISTS faceflow")
                self._run("CREATE TABLE IF NOT EXISTS faceflow.schema_version (version INTEGER NOT NULL)")
                rows = self._q("schema_version")
                if not rows:
                    self._run("INSERT INTO faceflow.schema_version VALUES (0)")
                version = int(rows[0][0]) if rows else 0
                if version > len(MIGRATIONS):
                    raise StoreUnavailable(f"{self.shown_url} has schema version {version}, newer than this "
                                           f"faceflow knows ({len(MIGRATIONS)})")
                for statements in MIGRATIONS[version:]:
                    for statement in statements:
                        self._run(statement)
                self._run("UPDATE faceflow.schema_version SET version = %s", (len(MIGRATIONS),))
        except psycopg.errors.FeatureNotSupported as exc:
            raise StoreUnavailable(f"{self.shown_url}: pgvector is not available ({exc})") from exc
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, psycopg.errors.InsufficientPrivilege):
                raise  # a newer schema, a lost connection: said already
            raise StoreUnavailable(f"cannot set up the gallery schema in {self.shown_url}: {exc.__cause__}") from exc
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot set up the gallery schema in {self.shown_url}: {exc}") from exc

    @property
    def schema_version(self) -> int:
        with self.transaction(write=False):
            return int(self._q("schema_version")[0][0])

    def close(self) -> None:
        self._conn.close()

    def _begin(self, write: bool) -> None:
        self._run("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _end(self, commit: bool) -> None:
        if not self._conn.closed:
            self._run("COMMIT" if commit else "ROLLBACK")

    def _run(self, sql: Any, params: Sequence[Any] = (), *, many: bool = False) -> list[tuple[Any, ...]]:
        errors = self._psycopg.errors
        try:
            with self._conn.cursor(binary=True) as cur:
                if many:
                    cur.executemany(sql, params)
                    return []
                cur.execute(sql, params or None)
                return cur.fetchall() if cur.description is not None else []
        except (errors.IntegrityError, errors.InvalidParameterValue, errors.DataException) as exc:
            raise GalleryError(f"refused by the store: {exc}") from exc
        except errors.LockNotAvailable as exc:
            raise StoreUnavailable(f"gallery store {self.shown_url}: waited {self._lock_timeout} for a lock another "
                                   f"connection holds ({exc.diag.message_primary or exc})") from exc
        except (self._psycopg.OperationalError, errors.InsufficientPrivilege) as exc:
            # the server went away, the connection broke, or this role may not do that (a reader writing)
            raise StoreUnavailable(f"gallery store {self.shown_url}: {exc}") from exc

    def _vec_param(self, vector: FloatArray) -> FloatArray:
        return np.asarray(vector, dtype=np.float32)

    def _decode_vectors(self, values: Sequence[Any], dim: int) -> FloatArray:
        return np.stack(values).astype(np.float32) if values else np.zeros((0, dim), np.float32)

    def _list_param(self, values: Sequence[Any]) -> list[Any]:
        return list(values)

    def _reserve_face_ids(self, n: int) -> list[int]:
        return [int(r[0]) for r in self._q("reserve_face_ids", n)]

    def _integrity_problems(self) -> list[str]:
        return []  # PostgreSQL enforces the foreign keys and checks its own pages

    # -- pgvector search -------------------------------------------------------------------------
    def _template(self, key: str, g: GalleryInfo, **extra: Any) -> Any:
        from psycopg import sql

        name = f"hnsw_g{g.id}"
        return sql.SQL(SQL[key]).format(
            index=sql.Identifier(name), index_name=sql.Literal(name), dim=sql.Literal(g.dim),
            gallery=sql.Literal(g.id), model=sql.Literal(g.model), **{k: sql.Literal(v) for k, v in extra.items()},
        )

    def has_native_ann(self) -> bool:
        return True

    def ensure_ann_index(self, gallery: str) -> None:
        with self.transaction():
            g = self.gallery(gallery, counts=False)
            if self._run(self._template("hnsw_exists", g))[0][0]:
                return
            self._run(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
            self._run(self._template("create_hnsw", g, m=HNSW_M, ef=HNSW_EF_CONSTRUCTION))
        with self._lock:
            self._run("ANALYZE faceflow.embeddings")  # so that the planner sees the gallery's size

    def ann_search(self, gallery: GalleryInfo, queries: FloatArray, k: int, *, ef: int = 200) -> list[VectorSet]:
        g = gallery
        ef = min(max(int(k), int(ef)), 1000)
        with self._lock:
            if self._ef != ef:  # a session setting: each query below is then one round trip
                self._run(f"SET hnsw.ef_search = {ef}")
                self._ef = ef
            key = (g.id, g.model, g.dim)
            if key not in self._ann_sql:
                self._ann_sql[key] = self._template("ann", g)
            out = []
            for q in queries:
                rows = self._run(self._ann_sql[key], (np.asarray(q, np.float32), int(k)))
                if not rows:
                    out.append(VectorSet.empty(g.dim))
                    continue
                fids, sids, vecs = zip(*rows, strict=True)
                out.append(VectorSet(np.asarray(fids, np.int64), np.asarray(sids, np.int64),
                                     self._decode_vectors(vecs, g.dim)))
            return out

    def similar_faces(self, gallery: GalleryInfo, face_ids: Iterable[int], k: int | None,
                      threshold: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Pairs (query face, other face, the query itself included) with cosine similarity >= ``threshold``
        among each query's ``k`` nearest by the gallery's HNSW index (:meth:`ensure_ann_index`; ``k`` at
        most :data:`MAX_EF_SEARCH`), or with ``k=None`` among all the gallery's faces (exact, a scan per
        query). Only ids travel back: the vectors stay in the server."""
        if k is not None and not 1 <= k <= MAX_EF_SEARCH:
            raise GalleryError(f"k must lie in 1..{MAX_EF_SEARCH} (None: exact), got {k}")
        ids = [int(i) for i in face_ids]
        with self._lock, self.transaction(write=False):
            if k is None:
                rows = self._run(self._template("similar_all", gallery), (ids, float(threshold)))
            else:
                self._run(f"SET LOCAL hnsw.ef_search = {_ef_for(k)}")
                self._run("SET LOCAL enable_seqscan = off")  # the HNSW index, also on a small gallery
                rows = self._run(self._template("similar_knn", gallery), (int(k), ids, float(threshold)))
        pairs = np.asarray(rows, np.int64).reshape(-1, 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()

    def explain_similar(self, gallery: str, face_ids: Iterable[int], k: int) -> str:
        """PostgreSQL's plan for :meth:`similar_faces` (to check that the HNSW index is used)."""
        from psycopg import sql

        with self._lock, self.transaction(write=False):
            g = self.gallery(gallery, counts=False)
            self._run(f"SET LOCAL hnsw.ef_search = {_ef_for(k)}")
            self._run("SET LOCAL enable_seqscan = off")
            plan = self._run(sql.SQL("EXPLAIN ") + self._template("similar_knn", g),
                             (int(k), [int(i) for i in face_ids], 0.0))
        return "\n".join(r[0] for r in plan)

    def explain_ann(self, gallery: str, query: FloatArray, k: int = 10) -> str:
        """PostgreSQL's plan for the ANN query (to check that the HNSW index is used)."""
        from psycopg import sql

        with self.transaction(write=False):
            g = self.gallery(gallery, counts=False)
            plan = self._run(sql.SQL("EXPLAIN ") + self._template("ann", g), (np.asarray(query, np.float32), int(k)))
        return "\n".join(r[0] for r in plan)

    def _on_gallery_deleted(self, gallery: GalleryInfo) -> None:
        self._run(self._template("drop_hnsw", gallery))
