"""Several choices (`n`) through the official SDK and the jobs API, against the
live platform (uvicorn, the real worker, the upstream speaking OpenAI's
protocol): refused where the catalog's max_n is lower, else forwarded, streamed
per choice (interleaved, each in its index), kept on the job, replayed from
Postgres and from the exact cache, held and rate-limited for every choice."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.billing.services import worst_case_cost
from apps.cache.policy import semantic_allowed
from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear, model_get
from apps.controls.models import FallbackPolicy, RateLimit, TenantBudget
from apps.jobs.events import stream_key
from apps.jobs.models import Job
from tests.support import Personas, http_client, job_until_final, sse_events

ASK: Any = [{"role": "user", "content": "three ways to say hello"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}


@pytest.fixture
def local_small(committed_db: None) -> Iterator[Any]:
    """local-small with max_n 3 (its catalog row put back after)."""
    before = LLMModel.objects.get(slug="local-small")
    try:
        LLMModel.objects.filter(slug="local-small").update(max_n=3)
        catalog_cache_clear()
        yield LLMModel.objects.filter(slug="local-small")
    finally:
        before.save()
        catalog_cache_clear()


@pytest.fixture
def sdk(platform_server, worker, committed_personas: Personas, local_small) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )


def _sent(upstream: Any) -> dict[str, Any]:
    bodies = [r["body"] for r in upstream.stats()["last_requests"] if r["path"].endswith("/chat/completions")]
    return bodies[-1]


def _calls(upstream: Any) -> int:
    return int(upstream.stats()["chat_per_model"].get("local-small", 0))


def _text(index: int) -> str:
    prefix = f"Choice {index}: " if index else ""
    return f"{prefix}Echo: three ways to say hello"


def test_n_above_the_models_max_is_a_400_naming_n_on_both_apis(
    platform_server, committed_personas: Personas, committed_db
):
    alice = committed_personas.alice
    with http_client(platform_server, alice.key) as client:
        for path in ("/v1/chat/completions", "/api/v1/jobs"):
            for n, code in ((2, "unsupported_parameter"), (129, "invalid"), (0, "invalid"), ("2", None)):
                response = client.post(path, json={"model": "local-small", "messages": ASK, "n": n})
                assert response.status_code == 400, (path, n, response.text)
                error = response.json()["error"]
                assert error["param"] == "n", (path, n, error)
                if code == "unsupported_parameter":
                    assert error["code"] == code and "at most n=1" in error["message"]
    with tenant_context(alice.tenant):
        assert not Job.objects.exists()  # nothing stored, nothing called


def test_n_choices_through_the_sdk_kept_on_the_job_and_priced_together(sdk: openai.OpenAI, upstream):
    raw = sdk.chat.completions.with_raw_response.create(model="local-small", messages=ASK, n=3, temperature=0.5)
    completion = raw.parse()
    assert _sent(upstream)["n"] == 3
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert [choice.message.content for choice in completion.choices] == [_text(0), _text(1), _text(2)]
    assert [choice.finish_reason for choice in completion.choices] == ["stop"] * 3
    assert completion.usage is not None
    words = sum(len(_text(index).split()) for index in range(3))
    assert completion.usage.completion_tokens == words  # the provider's usage covers every choice
    job = job_until_final(sdk_client(sdk), raw.headers["x-aip-job-id"])
    assert job["output"] == _text(0)
    assert [(c["index"], c["output"], c["finish_reason"]) for c in job["choices"]] == [
        (1, _text(1), "stop"),
        (2, _text(2), "stop"),
    ]
    assert job["usage"]["output_tokens"] == words
    assert raw.headers["x-aip-cost-usd"] == job["cost_usd"]


def sdk_client(sdk: openai.OpenAI) -> Any:
    """An httpx client with the SDK's key, on the platform's root."""
    import httpx

    root = str(sdk.base_url).rstrip("/").removesuffix("/v1")
    return httpx.Client(base_url=root, headers={"Authorization": f"Bearer {sdk.api_key}"}, trust_env=False)


def test_n_choices_stream_interleaved_and_the_sdk_assembles_each(sdk: openai.OpenAI, upstream):
    chunks = list(
        sdk.chat.completions.create(
            model="local-small", messages=ASK, n=2, stream=True, stream_options={"include_usage": True}
        )
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    order: list[int] = []
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.delta.content:
                order.append(choice.index)
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {0: _text(0), 1: _text(1)}
    assert finishes == {0: "stop", 1: "stop"}
    assert set(order) == {0, 1}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == sum(
        len(_text(index).split()) for index in range(2)
    )
    with sdk.chat.completions.stream(model="local-small", messages=ASK, n=2) as stream:
        final = stream.get_final_completion()
    assert [choice.message.content for choice in final.choices] == [_text(0), _text(1)]


def test_each_choice_keeps_its_own_tool_calls(sdk: openai.OpenAI, upstream):
    completion = sdk.chat.completions.create(
        model="local-small",
        messages=[{"role": "user", "content": "lookup hello"}],
        tools=[TOOL],  # type: ignore[list-item]
        n=2,
    )
    calls = [choice.message.tool_calls or [] for choice in completion.choices]
    assert [len(c) for c in calls] == [1, 1]
    assert [choice.finish_reason for choice in completion.choices] == ["tool_calls", "tool_calls"]
    first, second = calls[0][0], calls[1][0]
    assert first.type == second.type == "function"
    assert first.id != second.id and second.id.endswith("_1")
    assert first.function.arguments == second.function.arguments


def test_the_jobs_api_streams_each_choice_and_postgres_replays_them(
    platform_server, worker, committed_personas: Personas, local_small
):
    alice = committed_personas.alice
    with http_client(platform_server, alice.key) as client:
        created = client.post("/api/v1/jobs", json={"model": "local-small", "messages": ASK, "n": 2, "stream": True})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
            live = [event for _, event in sse_events(response)]
        texts: dict[int, str] = {}
        for event in live:
            if event["type"] == "delta":
                texts[event.get("choice", 0)] = texts.get(event.get("choice", 0), "") + event["text"]
        assert texts == {0: _text(0), 1: _text(1)}
        assert live[-1] == {
            "type": "done",
            "status": "succeeded",
            "finish_reason": "stop",
            "finish_reasons": ["stop", "stop"],
        }
        store = redis.Redis.from_url(settings.REDIS_URL)
        store.delete(stream_key(schema="acme", job_id=job_id))
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
            replayed = [event for _, event in sse_events(response)]
    assert replayed[:2] == [
        {"type": "delta", "text": _text(0)},
        {"type": "delta", "text": _text(1), "choice": 1},
    ]
    assert replayed[-1]["finish_reasons"] == ["stop", "stop"]


def test_an_exact_repeat_replays_every_choice_and_n_1_is_the_same_request_as_none(sdk: openai.OpenAI, upstream):
    first = sdk.chat.completions.create(model="local-small", messages=ASK, n=2, temperature=0)
    calls = _calls(upstream)
    again = sdk.chat.completions.create(model="local-small", messages=ASK, n=2, temperature=0)
    assert _calls(upstream) == calls  # the exact cache
    assert [c.message.content for c in again.choices] == [c.message.content for c in first.choices]
    streamed = list(sdk.chat.completions.create(model="local-small", messages=ASK, n=2, temperature=0, stream=True))
    assert _calls(upstream) == calls
    texts: dict[int, str] = {}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: _text(0), 1: _text(1)}
    # One choice: n=1 and no n are one request, and the provider is not sent n.
    single = sdk.chat.completions.create(model="local-small", messages=ASK, temperature=0)
    assert "n" not in _sent(upstream)
    calls = _calls(upstream)
    same = sdk.chat.completions.create(model="local-small", messages=ASK, temperature=0, n=1)
    assert _calls(upstream) == calls
    assert same.choices[0].message.content == single.choices[0].message.content
    assert len(same.choices) == 1


def test_every_choice_is_held_and_rate_limited(personas: Personas, upstream):
    LLMModel.objects.filter(slug="local-small").update(max_n=3)
    catalog_cache_clear()
    RateLimit.objects.create(tenant=personas.alice.tenant, tokens_per_minute=60_000, burst_tokens=10_000)
    TenantBudget.objects.create(tenant=personas.alice.tenant, period="day", limit_usd=Decimal("10"))
    response = personas.alice.client().post(
        "/api/v1/jobs", {"model": "local-small", "messages": ASK, "n": 3, "max_tokens": 40}, format="json"
    )
    assert response.status_code == 202, response.content
    with tenant_context(personas.alice.tenant):
        job = Job.objects.get(pk=response.json()["id"])
    spec = model_get("local-small")
    assert spec is not None
    assert job.ratelimit_tokens == job.input_tokens_estimate + 3 * 40
    assert job.reserved_micros == worst_case_cost(
        spec, input_tokens=job.input_tokens_estimate, max_tokens=40, choices=3
    )
    assert job.reserved_micros > worst_case_cost(spec, input_tokens=job.input_tokens_estimate, max_tokens=40)
    catalog_cache_clear()


def test_a_fallback_step_with_a_lower_max_n_is_skipped(worker, committed_personas: Personas, local_small, upstream):
    FallbackPolicy.objects.create(tier="premium", chain=["premium-large", "local-small"])
    LLMModel.objects.filter(slug="premium-large").update(max_n=2)
    catalog_cache_clear()
    try:
        upstream.add_faults({"model": "premium-large", "status": 500, "message": "premium is down", "times": 10})
        carol = committed_personas.carol
        created = carol.client().post(
            "/api/v1/jobs", {"model": "premium-large", "messages": ASK, "n": 3}, format="json"
        )
        assert created.status_code == 400 and created.json()["error"]["param"] == "n"
        created = carol.client().post(
            "/api/v1/jobs", {"model": "premium-large", "messages": ASK, "n": 2}, format="json"
        )
        job = job_until_final(carol.client(), created.json()["id"], timeout=30)
        assert job["status"] == "succeeded" and job["answered_by"] == "local-small"
        assert len(job["choices"]) == 1
    finally:
        LLMModel.objects.filter(slug="premium-large").update(max_n=1)
        catalog_cache_clear()


def test_a_paraphrase_never_answers_several_choices():
    assert semantic_allowed({})
    assert semantic_allowed({"n": 1})
    assert not semantic_allowed({"n": 2})


def test_the_provider_call_relays_each_choices_pieces_tagged_with_its_index(local_small, upstream):
    from apps.llm.chat import chat_stream

    spec = model_get("local-small")
    assert spec is not None
    text: list[str] = []
    parts: list[dict[str, Any]] = []
    result = chat_stream(spec, messages=ASK, params={"n": 2}, on_delta=text.append, on_part=parts.append)
    assert "".join(text) == result.output == _text(0)
    assert {part["type"] for part in parts} == {"delta"} and {part["choice"] for part in parts} == {1}
    assert "".join(part["text"] for part in parts) == _text(1)
    assert result.choices == [
        {"index": 1, "output": _text(1), "tool_calls": None, "refusal": "", "logprobs": None, "finish_reason": "stop"}
    ]
