"""schemathesis against the live OpenAPI schema of a real server: no 500 and no answer outside the schema
(status codes, content types, bodies), on generated requests that fit the schema and on requests that
break it, bounded in examples and time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from faceflow.service.keys import KeyStore  # noqa: E402
from tests.service_server import Server, start_server  # noqa: E402

EXAMPLES = 10
"""Generated requests per operation (there are about 20 operations)."""
BUDGET_SECONDS = 150.0
"""Wall time for the whole schema run; operations past it are skipped, not failed."""



@pytest.fixture(scope="module")
def schema_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    home: Path = tmp_path_factory.mktemp("schema-home")
    with KeyStore(home / "keys.db") as store:
        key = store.create("fuzz", "admin")[0]
    # a rate high enough for the generated traffic (the limit itself is tested in test_service.py)
    srv = start_server(home, rate_limit=1000, rate_burst=1000, max_upload_bytes=4 * 1024 * 1024)
    try:
        with srv.client(key) as c:
            c.post("/v1/galleries", json={"name": "g", "model": "sface"})
        yield srv, key
    finally:
        srv.stop()


def test_api_conforms_to_its_schema(schema_server: tuple[Server, str]) -> None:
    """Every operation of /openapi.json, EXAMPLES generated requests each (derandomised), with an admin key."""
    server, key = schema_server
    api = schemathesis.openapi.from_url(server.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: dict[str, str] = {}
    tried: list[str] = []
    t0 = time.monotonic()
    for result in api.get_all_operations():
        operation = result.ok()
        if time.monotonic() - t0 > BUDGET_SECONDS:
            break
        tried.append(operation.label)

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: object) -> None:
                case.call_and_validate(headers={"Authorization": f"Bearer {key}"},  # type: ignore[attr-defined]
                                       checks=checks, timeout=60)

            try:
                run()
            except Unsatisfiable:  # nothing to break in an operation without parameters
                assert mode == GenerationMode.NEGATIVE
            except Exception as exc:  # one operation's failure is reported with the others
                failures[f"{operation.label} ({mode})"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        assert server.alive(), server.logs()
    assert len(tried) >= 15, tried  # the budget allowed (nearly) all of them
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert "Traceback" not in server.logs()
