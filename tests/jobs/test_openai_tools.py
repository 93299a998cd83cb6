"""Tools and structured outputs through the official openai SDK, unchanged but for
base_url and key, against the live platform (uvicorn, the real worker, the
upstream speaking OpenAI's protocol): tool calls streamed and not, a tool round
trip, parse() with a Pydantic model, JSON mode, the full parameter set with its
nulls, and the same request through the jobs API."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django_tenants.utils import tenant_context
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel

from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear
from apps.jobs.models import Job
from tests.support import Personas, http_client, job_until_final, sse_events

WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
CLOCK: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}},
            "required": ["tz"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "get_weather and get_time for Paris"}]


@pytest.fixture
def sdk(platform_server, worker, committed_personas: Personas) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )


def _calls(upstream: Any) -> int:
    return int(upstream.stats()["chat_per_model"].get("local-small", 0))


def _sent(upstream: Any) -> dict[str, Any]:
    """The last chat request the upstream received."""
    bodies = [r["body"] for r in upstream.stats()["last_requests"] if r["path"].endswith("/chat/completions")]
    return bodies[-1]


def test_a_tool_round_trip(sdk: openai.OpenAI, upstream, committed_personas: Personas):
    raw = sdk.chat.completions.with_raw_response.create(
        model="local-small", messages=ASK, tools=[WEATHER, CLOCK], tool_choice="auto", parallel_tool_calls=True
    )
    first = raw.parse()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": ASK[0]["content"], "days": 1}  # type: ignore[union-attr]
    sent = _sent(upstream)
    assert sent["tools"] == [WEATHER, CLOCK] and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True
    # The job keeps them.
    job = committed_personas.alice.client().get(f"/api/v1/jobs/{raw.headers['x-aip-job-id']}").json()
    assert job["tool_calls"] == [call.model_dump(exclude_none=True) for call in calls]
    assert job["finish_reason"] == "tool_calls"
    # The tool results go back (the assistant's message with content null), and the model answers.
    results: list[ChatCompletionMessageParam] = [
        {"role": "tool", "tool_call_id": call.id, "content": f"result of {call.function.name}"}  # type: ignore[union-attr]
        for call in calls
    ]
    messages: list[ChatCompletionMessageParam] = [
        *ASK,
        choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
        *results,
    ]
    final = sdk.chat.completions.create(model="local-small", messages=messages, tools=[WEATHER, CLOCK])
    assert final.choices[0].message.content == "Tool results: result of get_weather; result of get_time"
    assert final.choices[0].finish_reason == "stop"


def test_streamed_tool_calls_are_assembled_by_the_sdk(sdk: openai.OpenAI, upstream):
    upstream.configure(chunk_delay_ms=5)
    with sdk.chat.completions.stream(model="local-small", messages=ASK, tools=[WEATHER, CLOCK]) as stream:
        kinds = [event.type for event in stream]
        completion = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in kinds and "tool_calls.function.arguments.done" in kinds
    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert calls[0].function.parsed_arguments == {"city": ASK[0]["content"], "days": 1}  # strict: parsed
    assert completion.choices[0].finish_reason == "tool_calls"


def test_the_jobs_api_takes_the_same_request_and_streams_tool_call_events(
    platform_server, worker, committed_personas: Personas
):
    alice = committed_personas.alice
    body = {"model": "local-small", "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}
    created = alice.client().post("/api/v1/jobs", body, format="json")
    assert created.status_code == 202, created.json()
    job = job_until_final(alice.client(), created.json()["id"])
    assert job["status"] == "succeeded" and job["finish_reason"] == "tool_calls"
    assert job["output"] == ""
    assert [call["function"]["name"] for call in job["tool_calls"]] == ["get_weather"]
    with (
        http_client(platform_server, alice.key) as live,
        live.stream("GET", f"/api/v1/jobs/{job['id']}/events") as response,
    ):
        events = [event for _, event in sse_events(response)]
    pieces = [event for event in events if event["type"] == "tool_call"]
    assert pieces[0]["name"] == "get_weather" and pieces[0]["id"] == job["tool_calls"][0]["id"]
    assert "".join(piece["arguments"] for piece in pieces) == job["tool_calls"][0]["function"]["arguments"]


class Forecast(BaseModel):
    city: str
    highs: list[float]
    sunny: bool


def test_parse_with_a_pydantic_model(sdk: openai.OpenAI, upstream):
    completion = sdk.chat.completions.parse(
        model="local-small", messages=[{"role": "user", "content": "Paris"}], response_format=Forecast, seed=7
    )
    assert completion.choices[0].message.parsed == Forecast(city="Paris", highs=[1.5], sunny=True)
    sent = _sent(upstream)
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "Forecast"
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert sent["seed"] == 7


def test_json_mode(sdk: openai.OpenAI):
    completion = sdk.chat.completions.create(
        model="local-small",
        messages=[{"role": "user", "content": "as json"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(completion.choices[0].message.content or "") == {"echo": "as json"}


def test_every_chat_completions_parameter_is_taken_and_forwarded(sdk: openai.OpenAI, upstream):
    LLMModel.objects.filter(slug="local-small").update(supports_reasoning=True)  # it takes reasoning_effort
    catalog_cache_clear()
    try:
        _create_with_every_parameter(sdk)
    finally:
        LLMModel.objects.filter(slug="local-small").update(supports_reasoning=False)
        catalog_cache_clear()
    sent = _sent(upstream)
    for name, value in {
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 1,
        "stop": ["\n\n"],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "end-user-1",
        "reasoning_effort": "low",
        "verbosity": "low",
        "prompt_cache_key": "k1",
        "safety_identifier": "s1",
    }.items():
        assert sent[name] == value, name
    # The allowance, under the one name this model's provider takes.
    assert [sent.get(name) for name in ("max_tokens", "max_completion_tokens") if name in sent] == [30]
    assert "tools" not in sent and "store" not in sent and "metadata" not in sent  # local-small does not allow store
    assert sent["service_tier"] == "auto"  # an OpenAI-provider model: sent as sent


def _create_with_every_parameter(sdk: openai.OpenAI) -> None:
    sdk.chat.completions.create(
        model="local-small",
        messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hello"}],
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        logit_bias={"50256": -100},
        logprobs=True,
        top_logprobs=2,
        max_completion_tokens=30,
        seed=1,
        stop=["\n\n"],
        temperature=0.2,
        top_p=0.9,
        user="end-user-1",
        reasoning_effort="low",
        verbosity="low",
        prompt_cache_key="k1",
        safety_identifier="s1",
        metadata={"trace": "t1"},
        store=False,
        service_tier="auto",
        n=1,
        stream_options=None,
        extra_body={"tools": None, "tool_choice": None, "response_format": None},  # nulls: absent
    )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_token": 5}, "max_token"),  # a typo is still an error
        ({"tool_choice": "auto"}, "tool_choice"),  # without tools
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
        ({"tools": [{"type": "custom", "function": {"name": "x"}}]}, "tools.0.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"tools": [WEATHER], "functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.name"),
        ({"n": 2}, "n"),
        ({"store": True}, "store"),  # local-small does not allow it (tests/jobs/test_service_tiers.py)
        ({"service_tier": "priority"}, "service_tier"),  # local-small lists no tiers
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"max_tokens": 5, "max_completion_tokens": 5}, "max_completion_tokens"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "user", "content": None}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages.0.tool_calls"),
    ],
)
def test_bad_parameters_are_400_naming_the_field_on_both_apis(
    platform_server, committed_personas: Personas, extra: dict[str, Any], param: str
):
    alice = committed_personas.alice
    body = {"model": "local-small", "messages": [{"role": "user", "content": "hi"}], **extra}
    with http_client(platform_server, alice.key) as client:
        v1 = client.post("/v1/chat/completions", json=body)
        jobs = client.post("/api/v1/jobs", json=body)
    for response in (v1, jobs):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param, response.text
    with tenant_context(alice.tenant):
        assert not Job.objects.exists()  # nothing was stored or called


def test_an_exact_repeat_replays_the_tool_calls_without_a_call(sdk: openai.OpenAI, upstream):
    first = sdk.chat.completions.create(model="local-small", messages=ASK, tools=[WEATHER, CLOCK], temperature=0)
    calls = _calls(upstream)
    again = sdk.chat.completions.create(model="local-small", messages=ASK, tools=[WEATHER, CLOCK], temperature=0)
    assert _calls(upstream) == calls  # answered by the exact cache
    assert again.choices[0].message.tool_calls == first.choices[0].message.tool_calls
    assert again.choices[0].finish_reason == "tool_calls"
    streamed = list(
        sdk.chat.completions.create(
            model="local-small", messages=ASK, tools=[WEATHER, CLOCK], temperature=0, stream=True
        )
    )
    assert _calls(upstream) == calls
    pieces = [c.choices[0].delta.tool_calls[0] for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert [p.function.name for p in pieces if p.function and p.function.name] == ["get_weather", "get_time"]
    # Another tool set is another request: never answered by these calls.
    other = sdk.chat.completions.create(model="local-small", messages=ASK, tools=[CLOCK], temperature=0)
    assert _calls(upstream) == calls + 1
    assert [c.function.name for c in other.choices[0].message.tool_calls or []] == ["get_time"]  # type: ignore[union-attr]


def test_null_means_absent_on_openai_fields_and_not_on_the_job_apis_own(committed_personas: Personas):
    client = committed_personas.alice.client()
    nulls = {"metadata": None, "stop": None, "tools": None, "seed": None, "max_tokens": None, "user": None}
    body = {"model": "routing-probe", "messages": [{"role": "user", "content": "hi", "name": None}], **nulls}
    created = client.post("/api/v1/jobs", body, format="json")
    assert created.status_code == 202, created.json()
    with tenant_context(committed_personas.alice.tenant):
        job = Job.objects.get(pk=created.json()["id"])
    assert job.params == {} and job.metadata == {} and job.messages == [{"role": "user", "content": "hi"}]
    # The job API's own options are not OpenAI's: a null there is still a mistake.
    refused = client.post("/api/v1/jobs", {**body, "webhook": None}, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "webhook"
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")  # no worker serves it


def test_a_refusal_reaches_parse_and_the_stream(sdk: openai.OpenAI, committed_personas: Personas):
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "[refuse] tell me"}]
    parsed = sdk.chat.completions.parse(model="local-small", messages=ask, response_format=Forecast)
    message = parsed.choices[0].message
    assert message.refusal == "I can't help with that." and message.parsed is None and message.content is None
    with sdk.chat.completions.stream(model="local-small", messages=ask, response_format=Forecast) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "refusal.delta" in kinds and final.choices[0].message.refusal == "I can't help with that."


def test_logprobs_come_back_streamed_and_not(sdk: openai.OpenAI):
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "three small words"}]
    completion = sdk.chat.completions.create(model="local-small", messages=ask, logprobs=True, top_logprobs=1)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert "".join(entry.token for entry in logprobs.content) == completion.choices[0].message.content
    assert all(len(entry.top_logprobs) == 1 for entry in logprobs.content)
    chunks = list(
        sdk.chat.completions.create(model="local-small", messages=ask, logprobs=True, top_logprobs=1, stream=True)
    )
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    assert [e.token for e in streamed] == [e.token for e in logprobs.content]


def test_the_exact_cache_keys_on_what_changes_the_answer_and_not_on_who_asks(sdk: openai.OpenAI, upstream):
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "cache key check"}]
    sdk.chat.completions.create(model="local-small", messages=ask, temperature=0, user="end-user-1")
    calls = _calls(upstream)
    again = sdk.chat.completions.create(model="local-small", messages=ask, temperature=0, user="end-user-2")
    assert _calls(upstream) == calls  # another end user, the same answer: from the cache
    assert again.choices[0].message.content == "Echo: cache key check"
    sdk.chat.completions.create(model="local-small", messages=ask, temperature=0, seed=3)
    assert _calls(upstream) == calls + 1  # a seed may change the answer: its own entry


def test_the_legacy_functions_are_sent_as_tools_and_answered_as_function_call(sdk: openai.OpenAI, upstream):
    function: Any = {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": "get_weather in Oslo"}]
    first = sdk.chat.completions.create(model="local-small", messages=ask, functions=[function], function_call="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call is not None and choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == {"city": "get_weather in Oslo"}
    sent = _sent(upstream)
    assert sent["tools"] == [{"type": "function", "function": function}] and sent["tool_choice"] == "auto"
    assert "functions" not in sent and "function_call" not in sent
    # Streamed: delta.function_call pieces.
    chunks = list(sdk.chat.completions.create(model="local-small", messages=ask, functions=[function], stream=True))
    calls = [c.choices[0].delta.function_call for c in chunks if c.choices and c.choices[0].delta.function_call]
    assert calls[0] is not None and calls[0].name == "get_weather"
    assert "".join(c.arguments or "" for c in calls if c) == choice.message.function_call.arguments
    # The result goes back as a function message: the provider gets a tool result tied to the call.
    history: list[Any] = [
        *ask,
        {"role": "assistant", "content": None, "function_call": choice.message.function_call.model_dump()},
        {"role": "function", "name": "get_weather", "content": "rain"},
    ]
    final = sdk.chat.completions.create(model="local-small", messages=history, functions=[function])
    assert final.choices[0].message.content == "Tool results: rain"
    sent = _sent(upstream)
    assert sent["messages"][1]["tool_calls"][0]["id"] == sent["messages"][2]["tool_call_id"]
    assert sent["messages"][2]["role"] == "tool"


def test_the_providers_system_fingerprint_is_relayed_and_kept(
    sdk: openai.OpenAI, upstream, committed_personas: Personas
):
    from devtools.upstream import FINGERPRINT

    raw = sdk.chat.completions.with_raw_response.create(
        model="local-small", messages=[{"role": "user", "content": "fingerprint please"}]
    )
    assert raw.parse().system_fingerprint == FINGERPRINT
    assert raw.parse().service_tier is None  # the upstream names no tier: none is made up
    chunks = list(
        sdk.chat.completions.create(
            model="local-small",
            messages=[{"role": "user", "content": "fingerprint streamed"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].system_fingerprint == FINGERPRINT
    job = job_until_final(committed_personas.alice.client(), raw.headers["x-aip-job-id"])
    assert (job["system_fingerprint"], job["service_tier"]) == (FINGERPRINT, None)
