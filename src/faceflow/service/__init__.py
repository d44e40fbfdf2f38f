"""``faceflow serve``: the library over HTTP (FastAPI), with API keys, limits and a web page.

No face logic lives here: routes decode the upload, call the library (:class:`~faceflow.pipeline.Analyzer`,
:func:`~faceflow.recognize.verify_images`, :mod:`faceflow.gallery.workflows`) and turn its answers and
errors into JSON. Modules: :mod:`.settings` (serve.toml, environment, flags), :mod:`.keys` (hashed
API keys), :mod:`.state` (what a process shares), :mod:`.limits` (body size, rate, work pool),
:mod:`.errors` (the error codes), :mod:`.metrics`, :mod:`.app` (:func:`~.app.create_app`), the routes
(:mod:`.routes_images`, :mod:`.routes_galleries`) and ``static/`` (the web page).

API contract (OpenAPI at ``/docs`` and ``/openapi.json``)
---------------------------------------------------------
Auth: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` on every ``/v1`` route; 401
``unauthorized`` when missing or wrong, 403 ``forbidden`` when the key's scope (read < write < admin)
is too weak, 429 ``rate_limited`` with ``Retry-After`` over the key's rate. Errors are always
``{"code": ..., "message": ...}`` (codes in :mod:`faceflow.service.errors`).

Images are uploads (bytes), never paths: a multipart field, or where noted the raw body. A field
carries one image (a second is 422 ``invalid_request``) except where it may be repeated.

* ``GET /v1/me`` (read) -> ``{"id", "name", "scope", "galleries"}``: the key itself (sign-in check).
* ``POST /v1/analyze?stages=a,b&detector=d&embeddings=false`` (read): multipart ``image`` or the raw
  body -> ``{"width", "height", "faces": [<face as in faces.jsonl>]}``.
* ``POST /v1/verify?model=sface`` (read): multipart ``image1``, ``image2`` -> ``{"similarity",
  "decision", "threshold", "model", "far", "faces": [{"box", "faces_found"}, {...}]}``.
* ``POST /v1/embed?model=sface`` (read): ``image`` -> ``{"model", "width", "height", "faces": [{"box",
  "score", "embedding"}]}``.
* ``GET /v1/galleries`` (read) -> ``[{"name", "model", "dim", "threshold", "subjects", "faces",
  "created_at"}]`` (only those the key may touch); ``POST /v1/galleries`` (write) JSON ``{"name",
  "model"?, "threshold"?}`` -> 201 the gallery; ``GET /v1/galleries/{g}`` (read) the gallery;
  ``DELETE /v1/galleries/{g}`` (write) -> ``{"deleted": 1}``.
* ``GET /v1/galleries/{g}/subjects`` (read) -> ``[{"name", "faces", "created_at"}]``;
  ``DELETE /v1/galleries/{g}/subjects/{subject}`` (write) -> ``{"deleted": 1}``.
* ``POST /v1/galleries/{g}/subjects/{subject}/faces?largest=false`` (write): multipart ``image``,
  repeated -> 201 ``{"subject", "enrolled": [face ids], "failed": [{"name", "reason"}], "notes": [...]}``
  (422 ``unprocessable`` when no photo worked).
* ``GET /v1/galleries/{g}/faces?subject=`` (read) -> ``[{"id", "subject", "box", "quality",
  "created_at", "upload"}]``; ``DELETE /v1/galleries/{g}/faces/{id}`` (write) -> ``{"deleted": 1}``.
* ``GET /v1/galleries/{g}/export`` (read) -> a zip (gallery.json, subjects.jsonl, faces.jsonl,
  embeddings/*.npy: the format of ``faceflow gallery export``).
* ``POST /v1/galleries/{g}/identify?top_k=5`` (read): ``image`` or the raw body -> ``{"width",
  "height", "faces": [{"box": [x1, y1, x2, y2], "score", "subject": name or null (open set), "similarity",
  "threshold", "matches": [{"subject", "similarity"}]}]}``.
* A gallery the key may not touch answers 404 ``not_found`` exactly as a missing one.
* ``GET /v1/models`` (read) -> ``[{"name", "task", "licence", "default", "loaded"}]``.
* ``GET /healthz`` (200 while the process lives), ``GET /readyz`` (200 once the default models are
  loaded, else 503 ``not_ready``), ``GET /metrics`` (Prometheus text): no key needed.
* ``GET /`` serves ``static/index.html``; ``/static/...`` the folder.

Limits: body over ``max_upload_bytes`` 413 ``too_large``; image over ``max_pixels`` 422
``image_too_large`` (from its header, before decoding); over ``request_timeout`` 504 ``timeout``;
work queue full 503 ``busy`` with ``Retry-After``.
"""
