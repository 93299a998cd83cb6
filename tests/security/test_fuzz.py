"""Schemathesis fuzzes every operation of the OpenAPI schema (`/api/schema/`, which
describes the jobs API, `/v1` chat completions, embeddings and models, and the
job events) against the live ASGI server with a real key, a real worker and the
real upstream behind it: valid, invalid and edge-case requests (its examples,
coverage and fuzzing phases). No answer may be a 5xx, and every error answer has
the API's error shape.

The figures (operations, cases, server errors) are printed; FUZZ_MAX_EXAMPLES
(default 40 per operation) trades depth for time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import Personas, http_client

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "40"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def _fuzz(url: str, key: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{url}/api/schema/",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "not_a_server_error",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        os.environ.get("FUZZ_SEED", "20261202"),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
        "--output-truncate",
        "true",
    ]
    # Its own working directory: nothing it writes lands in the checkout.
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900)


def test_schema_fuzzing_finds_no_server_error(
    platform_server, worker, committed_personas: Personas, tmp_path: Path, capsys
):
    key = committed_personas.alice.key
    with http_client(platform_server, key) as client:
        schema = client.get("/api/schema/", headers={"Accept": "application/json"}).json()
    operations = sum(len(methods) for methods in schema["paths"].values())
    assert operations >= 10
    assert {"/v1/chat/completions", "/v1/embeddings", "/api/v1/jobs/{job_id}/events"} <= set(schema["paths"])
    result = _fuzz(platform_server.url, key, tmp_path)
    summary = result.stdout[result.stdout.find("SUMMARY") :] if "SUMMARY" in result.stdout else result.stdout[-3000:]
    with capsys.disabled():
        print(f"\nschemathesis: {operations} operations in the schema\n{summary}")
    assert result.returncode == 0, f"{result.stdout[-8000:]}\n{result.stderr[-2000:]}"
    cases = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert cases is not None and int(cases.group(1)) >= 10 * operations, summary
