"""The production LLM worker: a separate `celery worker -P gevent` process started
with the Procfile's own command, running many streaming jobs at once, while one
web process relays every job's tokens to several listeners through its stream hub."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Personas, http_client, job_until_final, llm_worker_process, worker_process_env

ROOT = Path(__file__).resolve().parents[2]
JOBS = 40


@pytest.fixture
def gevent_worker(platform, committed_db, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = worker_process_env(LLM_QUEUES="llm.pool-probe", LLM_WORKER_CONCURRENCY="100", CELERY_LOG_LEVEL="WARNING")
    with llm_worker_process(env, tmp_path / "worker.log") as process:
        yield process
    assert b"Traceback" not in (tmp_path / "worker.log").read_bytes(), (tmp_path / "worker.log").read_text()


async def _follow(url: str, key: str, job_id: str, *, after: str | None = None, limit: int | None = None):
    """(ids, concatenated delta text, last event) of one SSE listener."""
    headers = {"Authorization": f"Bearer {key}", **({"Last-Event-ID": after} if after else {})}
    ids: list[str] = []
    text, last = "", {}
    async with (
        httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as client,
        client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200
        event_id = ""
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                import json

                last = json.loads(line[6:])
                ids.append(event_id)
                if last["type"] == "delta":
                    text += last["text"]
                if limit is not None and len(ids) >= limit:
                    break
    return ids, text, last


async def _listen_all(url: str, key: str, job_ids: list[str]) -> list[Any]:
    """Every job gets a listener from the start; every fourth also a listener that
    drops after two events and resumes with Last-Event-ID."""

    async def resumed(job_id: str) -> tuple[list[str], str, dict[str, Any]]:
        ids, text, _ = await _follow(url, key, job_id, limit=2)
        more_ids, more_text, last = await _follow(url, key, job_id, after=ids[-1])
        return ids + more_ids, text + more_text, last

    tasks = [_follow(url, key, job_id) for job_id in job_ids]
    tasks += [resumed(job_id) for job_id in job_ids[::4]]
    return await asyncio.gather(*tasks)


def test_gevent_worker_runs_many_streaming_jobs_at_once_and_every_listener_gets_every_token(
    platform_server, gevent_worker, committed_personas: Personas, upstream
):
    upstream.configure(chunk_delay_ms=60)
    key = committed_personas.alice.key
    with http_client(platform_server, key) as alice:
        job_ids = []
        for i in range(JOBS):
            body = {"model": "pool-probe", "messages": [{"role": "user", "content": f"job {i} says a b c d e"}]}
            response = alice.post("/api/v1/jobs", json={**body, "stream": True})
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
        results = asyncio.run(_listen_all(platform_server.url, key, job_ids))
        jobs = [job_until_final(alice, job_id, timeout=60) for job_id in job_ids]

    assert [job["status"] for job in jobs] == ["succeeded"] * JOBS
    full, resumed = results[:JOBS], results[JOBS:]
    for job, (ids, text, last) in zip(jobs, full, strict=True):
        assert text == job["output"] == f"Echo: job {job_ids.index(job['id'])} says a b c d e"
        assert last == {"type": "done", "status": "succeeded", "finish_reason": "stop"}
        assert len(set(ids)) == len(ids)
    for job, (ids, text, _) in zip(jobs[::4], resumed, strict=True):
        assert text == job["output"], (ids, text)  # no gap, no duplicate across the reconnect
        assert len(set(ids)) == len(ids)
    stats = upstream.stats()
    assert stats["chat_per_model"]["pool-probe"] == JOBS
    # One worker process held many provider streams at once (a thread pool of 4, or
    # a pool that ran calls one by one, could not).
    assert stats["max_chat_in_flight"] >= 10


def test_gevent_worker_answers_paraphrases_with_the_local_embedder_while_other_jobs_stream(
    platform_server, gevent_worker, committed_personas: Personas, upstream
):
    """The local embedder runs in the hub's thread pool: lookups in a gevent
    worker answer paraphrases from the cache while other jobs stream."""
    from apps.controls.models import CachePolicy, EmbedderBackend

    alice = committed_personas.alice
    CachePolicy.objects.create(tenant=alice.tenant, semantic_enabled=True, embedder_backend=EmbedderBackend.LOCAL)
    upstream.configure(chunk_delay_ms=40)

    def body(content: str) -> dict[str, Any]:
        return {"model": "pool-probe", "messages": [{"role": "user", "content": content}]}

    with http_client(platform_server, alice.key) as client:
        first = client.post("/api/v1/jobs", json=body("What is the capital of France?")).json()["id"]
        assert job_until_final(client, first, timeout=60)["status"] == "succeeded"
        others = [
            client.post("/api/v1/jobs", json=body(f"story {i} about a b c d e f")).json()["id"] for i in range(10)
        ]
        paraphrases = [
            client.post("/api/v1/jobs", json=body(text)).json()["id"]
            for text in ("Which city is the capital of France?", "France: what is its capital?") * 3
        ]
        answered = [job_until_final(client, job_id, timeout=60) for job_id in paraphrases]
        streamed = [job_until_final(client, job_id, timeout=60) for job_id in others]
    assert [job["cached"] for job in answered] == ["semantic"] * 6
    assert {job["output"] for job in answered} == {"Echo: What is the capital of France?"}
    assert [(job["status"], job["cached"]) for job in streamed] == [("succeeded", None)] * 10
    assert upstream.stats()["chat_per_model"]["pool-probe"] == 11
