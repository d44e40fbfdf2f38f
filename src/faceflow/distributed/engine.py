"""The Ray engine: a photo library analysed (or enrolled) by a pool of Ray actors, resumably.

Ray Data drives the work: a dataset of batch numbers (one per row group of the job's pending-inputs
file, so a batch is always the same images, also when Ray retries it) is mapped by an actor pool
(:class:`ray.data.ActorPoolStrategy`); each actor builds one :class:`~faceflow.pipeline.Analyzer`
from the job's :class:`~faceflow.pipeline.AnalyzerOptions` (models loaded once per actor, one thread
each), reads its images itself (no pixels travel through Ray), writes the batch's Parquet shards (or
its gallery transaction) and returns a one-row summary that feeds the driver's progress bar. Ray
Data's streaming executor bounds the tasks in flight per actor and the finished outputs waiting for
the driver (back-pressure); the driver holds one row group of the manifest at a time.

A killed actor is restarted by Ray and its task retried; a batch already committed is not redone
(its images shard exists). A killed driver takes the local runtime with it; the rerun finds the
committed batches (see :mod:`faceflow.distributed.jobs`). The job folder must be on storage that
every node sees (one machine, or a shared file system).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceflow.distributed import jobs
from faceflow.errors import ConfigError, FaceflowError
from faceflow.extras import require
from faceflow.outputs import display_path, json_line
from faceflow.pipeline import AnalyzerOptions
from faceflow.types import ImageResult

Progress = Callable[[int, int], None]
"""Called with (images done, images in the job) as batches finish."""

OBJECT_STORE_BYTES = 256 * 2**20
"""Object store of a local runtime: summaries and batch numbers are all that travel, so a small one."""
_ENV_PREFIXES = ("FACEFLOW_",)
CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a cluster's address to accept a connection before ``ray.init`` (which retries for minutes)."""
MAX_BLOCKS = 4096
"""Most blocks (actor tasks) a job's batch numbers are split into; past it a block holds several batches."""


def _ray() -> Any:
    return require("ray", "the Ray engine (--engine ray)")


def worker_env() -> dict[str, str]:
    """Environment the workers need (faceflow's own variables), passed to a cluster's workers."""
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A :class:`ConfigError` naming ``address`` when nothing accepts a connection there within
    ``timeout`` seconds: ``ray.init`` would retry an unreachable address for about 14 minutes.
    Addresses that are not ``host:port`` (``auto``, ``local``) are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the cluster at ``address``, or start a local runtime with ``num_cpus`` (stopped at
    the end). A cluster that cannot be reached is a :class:`ConfigError` naming the address."""
    ray = _ray()
    if ray.is_initialized():  # a caller (a test, a notebook) manages the connection
        yield ray
        return
    env = {"env_vars": worker_env()}
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     object_store_memory=OBJECT_STORE_BYTES, runtime_env=env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
        raise ConfigError(f"cannot start or reach {where}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _data_context(ray: Any) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows its own, fed by the workers' summaries
    ctx.print_on_execution_start = False
    with contextlib.suppress(AttributeError):
        ctx.enable_operator_progress_bars = False


def _faceflow_error(exc: BaseException) -> FaceflowError | None:
    """The :class:`FaceflowError` a worker raised, found in the chain Ray wrapped it in."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, FaceflowError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def _run_batches(ray: Any, actor: type, kwargs: dict[str, Any], n_batches: int, *, workers: int,
                 on_summary: Callable[[dict[str, Any]], None]) -> None:
    """Map batch numbers ``0..n_batches-1`` through a pool of ``workers`` ``actor`` instances."""
    _data_context(ray)
    # Batch numbers come from the driver as small blocks (no read tasks that would wait for CPUs the
    # actors hold); a retried task redoes one block, whose committed batches it skips. A block is one
    # actor task, and Ray Data hands its output over only when the task ends: one batch per block (up
    # to MAX_BLOCKS blocks) keeps the progress bar live and the actors evenly loaded to the end,
    # where blocks of many batches left one actor finishing a long block while the others idled.
    per_block = max(1, -(-n_batches // MAX_BLOCKS))
    blocks = [np.arange(a, min(a + per_block, n_batches)) for a in range(0, n_batches, per_block)]
    ds = ray.data.from_numpy(blocks).rename_columns({"data": "id"}).map_batches(
        actor, fn_constructor_kwargs=kwargs, batch_size=1, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=workers),  # Ray Data restarts actors and retries their tasks
    )
    for handler in logging.getLogger("ray.data").handlers:  # its notes go to its log file, not our console
        if handler.name == "console":
            handler.setLevel(logging.ERROR)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            for i in range(len(batch["first"])):
                on_summary({k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in batch.items()})
    except Exception as exc:
        cause = _faceflow_error(exc)
        if cause is not None:
            raise cause from None
        raise


def _pending_batch(pending: Path, number: int) -> tuple[list[int], list[str], list[str | None], list[bool]]:
    """Indices, paths, annotated image names (``None``: not annotated) and whether a file of the user's
    is at that name, of one pending batch."""
    columns = ["index", "path_bytes", "annotated", "foreign"]
    table = jobs._pq().ParquetFile(pending).read_row_group(number, columns=columns)
    return (table.column(0).to_pylist(), [os.fsdecode(b) for b in table.column(1).to_pylist()],
            [None if b is None else os.fsdecode(b) for b in table.column(2).to_pylist()], table.column(3).to_pylist())


class AnalyzeBatch:
    """Ray actor: analyses batches of a job's pending inputs and writes their annotated images (when
    the manifest names them), then their shards."""

    def __init__(self, options: AnalyzerOptions, out: str, embeddings: bool) -> None:
        from faceflow.pipeline import Analyzer

        self.analyzer = Analyzer(options)
        self.out = Path(out)
        self.embeddings = embeddings

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        firsts, images, faces, errors = [], [], [], []
        for number in batch["id"]:
            indices, paths, names, foreign = _pending_batch(self.out / jobs.PENDING_FILE, int(number))
            shards = self.out / jobs.SHARDS_DIR
            done = shards / jobs.shard_names(indices[0])[1]
            if done.exists():  # committed before this task was retried: not redone
                table = jobs._pq().read_table(done, columns=["faces", "error"])
                n_faces = int(sum(table.column(0).to_pylist()))
                n_errors = sum(e is not None for e in table.column(1).to_pylist())
            else:
                results = [self._analyse(*item) for item in zip(paths, names, foreign, strict=True)]
                n_faces, n_errors = jobs.write_batch(shards, indices, results, embeddings=self.embeddings)
            firsts.append(indices[0])
            images.append(len(indices))
            faces.append(n_faces)
            errors.append(n_errors)
        return {"first": np.asarray(firsts), "images": np.asarray(images), "faces": np.asarray(faces),
                "errors": np.asarray(errors)}

    def _analyse(self, path: str, annotated: str | None, foreign: bool) -> ImageResult:
        """One image's result, its annotated copy written first and then listed, as the in-process engine
        does: never over a file of the user's (``foreign``), and a failed write becomes the image's error."""
        from faceflow.draw import annotate, encode_image
        from faceflow.outputs import ANNOTATED_DIR, append_annotated_list, not_ours, save_annotated

        result, image = self.analyzer.analyze_file(path)
        if annotated is None or image is None or result.error:
            return result
        root = self.out / ANNOTATED_DIR
        target = root / annotated
        try:
            problem = not_ours(target) if foreign else save_annotated(
                target, encode_image(annotate(image, result.faces), target.suffix))
        except ValueError as exc:
            problem = f"annotated image not written: {exc}"
        if problem:
            result.error = problem
        else:
            append_annotated_list(root, Path(annotated))
        return result


@dataclass
class JobSummary:
    """What a run of an analysis job did."""

    total: int
    skipped: int
    """Inputs done by an earlier run and kept."""
    analysed: int = 0
    faces: int = 0
    errors: int = 0
    dropped_shards: int = 0
    stale_annotated: int = 0
    """Annotated images of an earlier run removed (this run names none like them)."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(path, error) of every failed input in the assembled output, in input order."""


def _write_pending(plan: jobs.JobPlan, batch_size: int) -> int:
    """Rewrite the pending file with row groups of exactly ``batch_size`` inputs; returns the batches."""
    pa, pq = jobs._pa(), jobs._pq()
    source = pq.ParquetFile(plan.pending)
    tmp = plan.pending.with_name(plan.pending.name + ".tmp")
    buffer: list[Any] = []
    held = 0
    with pq.ParquetWriter(tmp, source.schema_arrow) as writer:
        for batch in source.iter_batches(batch_size=65_536):
            buffer.append(batch)
            held += batch.num_rows
            if held >= batch_size:
                table = pa.Table.from_batches(buffer)
                cut = held - held % batch_size
                writer.write_table(table.slice(0, cut), row_group_size=batch_size)
                buffer, held = [b for b in table.slice(cut).to_batches() if b.num_rows], held - cut
        if held:
            writer.write_table(pa.Table.from_batches(buffer), row_group_size=batch_size)
    os.replace(tmp, plan.pending)
    return int(pq.ParquetFile(plan.pending).metadata.num_row_groups) if plan.total > plan.done else 0


def analyze_job(
    inputs: Sequence[str | os.PathLike[str]],
    out: Path,
    options: AnalyzerOptions,
    *,
    embeddings: bool = False,
    annotate: bool = False,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    content_hash: bool = False,
    column: str = "path",
    progress: Progress | None = None,
) -> JobSummary:
    """Analyse the images named by ``inputs`` (see :func:`~faceflow.distributed.jobs.expand_inputs`)
    on Ray into ``out`` (see :mod:`faceflow.distributed.jobs`), skipping what an earlier run of the
    same job committed; ``workers`` actors (default: the cluster's CPUs), one CPU each. With
    ``annotate``, the actors write the annotated images under ``out/annotated`` as the in-process
    engine names them (``out`` must then be storage every node sees, as for the shards). Ends by
    writing ``out/faces.jsonl`` from the shards, in input order."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    options = _one_thread(options)
    folders = [p for p in inputs if Path(p).is_dir()]
    plan = jobs.plan_job(out, jobs.expand_inputs(inputs, exclude=[out], column=column), content_hash=content_hash,
                         annotate=folders if annotate else None, settings=job_settings(options, embeddings))
    if plan.total == 0:
        raise ConfigError("no image files found in " + ", ".join(map(display_path, inputs)))
    summary = JobSummary(plan.total, plan.done, dropped_shards=plan.dropped_shards,
                         stale_annotated=plan.stale_annotated)
    n_batches = _write_pending(plan, batch_size)
    if progress:
        progress(plan.done, plan.total)
    if n_batches:
        done = plan.done

        def on_summary(s: dict[str, Any]) -> None:
            nonlocal done
            done += int(s["images"])
            summary.analysed += int(s["images"])
            if progress:
                progress(done, plan.total)

        with ray_session(address, num_cpus=workers) as ray:
            size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            _run_batches(ray, AnalyzeBatch, {"options": options, "out": str(out), "embeddings": embeddings},
                         n_batches, workers=min(size, n_batches), on_summary=on_summary)
    plan.pending.unlink(missing_ok=True)
    tmp = out / "faces.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in jobs.iter_records(out):
            record.pop("index")
            fh.write(json_line(record))
            summary.faces += len(record["faces"])
            if record["error"] is not None:
                summary.errors += 1
                summary.failures.append((record["path"], record["error"]))
    os.replace(tmp, out / "faces.jsonl")
    return summary


def job_settings(options: AnalyzerOptions, embeddings: bool) -> str:
    """What a job's results depend on besides its inputs, as text: the stages, every stage's options,
    the pixel limit and ``embeddings`` (not threads or workers). A rerun with other settings redoes all."""
    from faceflow.stage import registry

    return json.dumps({"stages": list(options.stages), "embeddings": embeddings, "max_pixels": options.max_pixels,
                       "options": {s: repr(options.options_for(s)) for s in sorted(registry().names())}})


def _one_thread(options: AnalyzerOptions) -> AnalyzerOptions:
    """Each actor holds one CPU: one image at a time, one intra-op thread per model unless set."""
    import dataclasses

    return dataclasses.replace(options, workers=1, threads=1 if options.threads is None else options.threads)


# -- enrolment -----------------------------------------------------------------------------------


class EnrolBatch:
    """Ray actor: enrols batches of photos into a gallery, one transaction per batch, idempotently."""

    def __init__(self, store_url: str, gallery: str, items: str, largest: bool,
                 min_quality: float | None) -> None:
        from faceflow.gallery.backends import open_gallery_store
        from faceflow.gallery.workflows import analyzer_for

        self.store = open_gallery_store(store_url)
        self.gallery = gallery
        self.items = Path(items)
        self.largest = largest
        self.min_quality = min_quality
        self.analyzer = analyzer_for(self.store.gallery(gallery, counts=False), quality=min_quality is not None)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from faceflow.gallery.workflows import enroll_new

        firsts, images, enrolled, skipped, failed = [], [], [], [], []
        messages: list[str] = []
        for number in batch["id"]:
            table = jobs._pq().ParquetFile(self.items).read_row_group(int(number))
            names = table.column("name").to_pylist()
            paths = [Path(os.fsdecode(b)) for b in table.column("path_bytes").to_pylist()]
            report = enroll_new(self.store, self.gallery, list(zip(names, paths, strict=True)), self.analyzer,
                                largest=self.largest, min_quality=self.min_quality)
            firsts.append(int(table.column("index")[0].as_py()))
            images.append(len(paths))
            enrolled.append(report.enrolled)
            skipped.append(report.skipped)
            failed.append(len(report.failed))
            messages.append(json.dumps([[f.path, f.reason] for f in report.failed]))  # names hold any character
        return {"first": np.asarray(firsts), "images": np.asarray(images), "enrolled": np.asarray(enrolled),
                "skipped": np.asarray(skipped), "failed": np.asarray(failed), "messages": np.asarray(messages)}


@dataclass
class EnrolSummary:
    """What a Ray enrolment did."""

    photos: int = 0
    enrolled: int = 0
    skipped: int = 0
    """Photos already in the gallery (same source path and content): not enrolled again."""
    failed: list[tuple[str, str]] = field(default_factory=list)


def enroll_job(
    store_url: str,
    gallery: str,
    items: Sequence[tuple[str, Path]],
    *,
    largest: bool = False,
    min_quality: float | None = None,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> EnrolSummary:
    """Enrol ``(subject, photo)`` items on Ray: each actor analyses a batch and adds its faces in one
    transaction, skipping photos the gallery already holds (see
    :func:`~faceflow.gallery.workflows.enroll_new`), so that a rerun never duplicates a face."""
    pa, pq = jobs._pa(), jobs._pq()
    summary = EnrolSummary(photos=len(items))
    work = Path(tempfile.mkdtemp(prefix="faceflow-enrol-"))
    try:
        path = work / "items.parquet"
        schema = pa.schema([("index", pa.int64()), ("name", pa.string()), ("path_bytes", pa.binary())])
        rows = [{"index": i, "name": n, "path_bytes": os.fsencode(p)} for i, (n, p) in enumerate(items)]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=batch_size)
        n_batches = math.ceil(len(rows) / batch_size)
        done = 0

        def on_summary(s: dict[str, Any]) -> None:
            nonlocal done
            done += int(s["images"])
            summary.enrolled += int(s["enrolled"])
            summary.skipped += int(s["skipped"])
            summary.failed.extend((p, reason) for p, reason in json.loads(str(s["messages"])))
            if progress:
                progress(done, len(rows))

        if n_batches:
            with ray_session(address, num_cpus=workers) as ray:
                size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
                _run_batches(ray, EnrolBatch, {"store_url": store_url, "gallery": gallery, "items": str(path),
                                               "largest": largest, "min_quality": min_quality},
                             n_batches, workers=min(size, n_batches), on_summary=on_summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary
