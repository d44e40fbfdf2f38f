"""Analysing and indexing photo libraries beyond one process: resumable jobs on Ray.

* :mod:`faceflow.distributed.jobs`: a job's folder (the manifest of inputs, results as Parquet shards,
  what a rerun skips, the JSONL assembled from the shards); pyarrow only, no Ray.
* :mod:`faceflow.distributed.engine`: the Ray Data pipeline (an actor pool, each actor holding one
  :class:`~faceflow.pipeline.Analyzer`), for ``faceflow analyze --engine ray`` and ``enroll --engine ray``.
* :mod:`faceflow.distributed.clustering`: clustering a library too big for one in-memory agglomeration.

Ray and pyarrow are imported through :func:`faceflow.extras.require` (extra ``ray``), late, so that
``import faceflow`` never loads them.
"""
