"""Tests for devtools.upstream, the fake OpenAI-compatible provider, driven by the openai SDK."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from devtools.upstream import UpstreamServer

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "tell me about the gateway latency budget please"},
]
EXPECTED = "Echo: tell me about the gateway latency budget please"


@pytest.fixture(scope="module")
def server() -> Iterator[UpstreamServer]:
    srv = UpstreamServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def upstream(server: UpstreamServer) -> UpstreamServer:
    server.reset()
    return server


@pytest.fixture
def client(upstream: UpstreamServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(api_key="x", base_url=upstream.base_url, max_retries=0)
    try:
        yield c
    finally:
        c.close()


def _stream(
    client: openai.OpenAI, model: str = "gpt-4o", include_usage: bool | None = None
) -> tuple[list[str], list[ChatCompletionChunk]]:
    """Content deltas and all chunks of a streamed chat call."""
    contents: list[str] = []
    chunks: list[ChatCompletionChunk] = []
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        stream=True,
        stream_options=openai.omit if include_usage is None else {"include_usage": include_usage},
    )
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            contents.append(chunk.choices[0].delta.content)
    return contents, chunks


def test_health_and_control_roundtrip(upstream: UpstreamServer) -> None:
    r = httpx.get(upstream.root_url + "/health", trust_env=False)
    assert r.status_code == 200
    assert r.json() == {"ok": True}
    stats = upstream.stats()
    assert stats["total_requests"] == 0
    assert stats["faults"] == []
    assert stats["settings"]["stream_usage"] is True


def test_non_stream_chat(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == "gpt-4o-mini"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == EXPECTED
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == len(EXPECTED.split())
    # 3 + 8 words, plus 3 per message
    assert resp.usage.prompt_tokens == 3 + 8 + 3 * 2
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_non_stream_max_tokens_cuts_with_length(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="local-small", messages=MESSAGES, max_tokens=3)
    assert resp.choices[0].message.content == "Echo: tell me"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    resp = client.chat.completions.create(model="local-small", messages=MESSAGES, max_completion_tokens=2)
    assert resp.choices[0].message.content == "Echo: tell"


def test_any_model_name_is_answered(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="not-in-the-list", messages=MESSAGES)
    assert resp.model == "not-in-the-list"


def test_stream_with_usage_matches_non_stream(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    contents, chunks = _stream(client, include_usage=True)
    assert "".join(contents) == full.choices[0].message.content
    assert len(contents) == len(EXPECTED.split())
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first = chunks[0]
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    finish = chunks[-2]
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == len(contents)
    assert full.usage is not None
    assert last.usage.prompt_tokens == full.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    contents, chunks = _stream(client)
    assert "".join(contents) == EXPECTED
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_stream_usage_disabled_like_llama_cpp(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(stream_usage=False)
    contents, chunks = _stream(client, include_usage=True)
    assert "".join(contents) == EXPECTED
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_nonstream_usage_disabled_and_fixed_reply(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(nonstream_usage=False, reply="fixed words here")
    resp = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert resp.usage is None
    assert resp.choices[0].message.content == "fixed words here"
    upstream.reset()
    resp = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert resp.usage is not None
    assert resp.choices[0].message.content == EXPECTED


def test_the_service_tier_is_the_requests_or_the_configured_one(
    client: openai.OpenAI, upstream: UpstreamServer
) -> None:
    def reported(asked: Any = openai.omit) -> tuple[str | None, set[str | None]]:
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, service_tier=asked)
        chunks = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, service_tier=asked
        )
        return answer.service_tier, {chunk.service_tier for chunk in chunks}

    assert reported() == (None, {None})  # none asked, none said (as vLLM)
    assert reported("priority") == ("priority", {"priority"})
    assert reported("auto") == ("default", {"default"})  # a project on default
    upstream.configure(service_tier="scale")  # a project on scale units: whatever was asked
    assert reported("auto") == ("scale", {"scale"})
    upstream.configure(service_tier="")  # a server that never says
    assert reported("flex") == (None, {None})


def test_latency_and_chunk_delay(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.configure(latency_ms=150, chunk_delay_ms=20)
    t0 = time.monotonic()
    contents, _ = _stream(client)
    elapsed = time.monotonic() - t0
    assert "".join(contents) == EXPECTED
    assert elapsed >= 0.15 + 0.02 * len(contents)


def _as_float32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    flt = client.embeddings.create(
        model="text-embedding-3-small",
        input=["hello", "world"],
        encoding_format="float",
    )
    assert [d.index for d in flt.data] == [0, 1]
    vec = flt.data[0].embedding
    assert len(vec) == 1536
    assert abs(sum(v * v for v in vec) - 1.0) < 1e-5
    other = flt.data[1].embedding
    assert other != vec
    assert abs(sum(a * b for a, b in zip(vec, other, strict=True))) < 0.3  # near-orthogonal
    assert flt.usage.prompt_tokens == 2 and flt.usage.total_tokens == 2

    b64 = client.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="base64")
    assert isinstance(b64.data[0].embedding, str)  # the SDK leaves an explicit base64 answer alone
    raw = base64.b64decode(b64.data[0].embedding)
    decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    # like OpenAI, the float form carries the shortest decimal of each float32 component
    assert decoded == _as_float32(vec)
    assert decoded == pytest.approx(vec, abs=1e-7)

    # the SDK's default (it asks for base64 and decodes it) gives the same vector
    default = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert _as_float32(default.data[0].embedding) == decoded

    small = client.embeddings.create(
        model="text-embedding-3-small",
        input="hello",
        dimensions=64,
        encoding_format="float",
    )
    assert len(small.data[0].embedding) == 64
    assert abs(sum(v * v for v in small.data[0].embedding) - 1.0) < 1e-5
    again = client.embeddings.create(
        model="text-embedding-3-small",
        input="hello",
        dimensions=64,
        encoding_format="float",
    )
    assert again.data[0].embedding == small.data[0].embedding


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["local-small", "gpt-4o", "gpt-4o-mini"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("nope")
    assert exc.value.code == "model_not_found"


def test_fault_500(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.add_faults({"status": 500, "message": "boom"})
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert exc.value.status_code == 500
    assert exc.value.body == {
        "message": "boom",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    # consumed: the next call succeeds
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


def test_fault_429_with_retry_after(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.add_faults({"status": 429, "retry_after": 7})
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert exc.value.response.headers["retry-after"] == "7"
    assert exc.value.code == "rate_limit_exceeded"


def test_fault_times_two_then_success(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.add_faults({"status": 503, "times": 2})
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert exc.value.status_code == 503
    resp = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert resp.choices[0].message.content == EXPECTED
    stats = upstream.stats()
    assert stats["chat_per_model"] == {"gpt-4o": 3}
    assert stats["faults_triggered"] == 2
    assert stats["faults"] == []


def test_fault_only_hits_its_model(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.add_faults({"model": "gpt-4o", "status": 400, "message": "bad for 4o"})
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    assert len(upstream.stats()["faults"]) == 1
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert upstream.stats()["faults"] == []


def test_fault_timeout(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.add_faults({"kind": "timeout"})
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, timeout=0.5)
    assert time.monotonic() - t0 < 5
    # the hanging handler noticed the disconnect; the server keeps answering
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


@pytest.mark.parametrize("chunk_delay_ms", [0, 10])
def test_fault_cut_stream(client: openai.OpenAI, upstream: UpstreamServer, chunk_delay_ms: int) -> None:
    upstream.configure(chunk_delay_ms=chunk_delay_ms)
    upstream.add_faults({"kind": "cut_stream", "after_chunks": 3})
    contents: list[str] = []
    finishes: list[str] = []
    # The openai 3.x SDK wraps the truncated chunked body (httpx2.RemoteProtocolError)
    # in APIConnectionError while iterating; it does not end the iteration quietly.
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            if chunk.choices:
                if chunk.choices[0].delta.content:
                    contents.append(chunk.choices[0].delta.content)
                if chunk.choices[0].finish_reason:
                    finishes.append(chunk.choices[0].finish_reason)
    assert contents == ["Echo:", " tell", " me"]
    assert finishes == []
    # the next stream is whole again
    again, _ = _stream(client)
    assert "".join(again) == EXPECTED


def test_cut_stream_on_non_stream_request(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.add_faults({"kind": "cut_stream"})
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)


def test_embeddings_fault(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    upstream.add_faults({"endpoint": "embeddings", "status": 500})
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_stats_count_per_model_and_bodies(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    for model in ("gpt-4o", "gpt-4o", "local-small"):
        client.chat.completions.create(model=model, messages=MESSAGES)
    _stream(client, model="gpt-4o-mini")
    client.models.list()
    stats = upstream.stats()
    assert stats["chat_per_model"] == {"gpt-4o": 2, "local-small": 1, "gpt-4o-mini": 1}
    assert stats["chat_streams"] == 1
    assert stats["total_requests"] == 5
    assert stats["per_path"] == {"/v1/chat/completions": 4, "/v1/models": 1}
    assert [b["model"] for b in stats["last_bodies"]] == [
        "gpt-4o",
        "gpt-4o",
        "local-small",
        "gpt-4o-mini",
    ]
    assert stats["last_bodies"][-1]["stream"] is True
    assert stats["last_requests"][0]["headers"]["authorization"] == "Bearer x"
    upstream.reset()
    assert upstream.stats()["total_requests"] == 0


def test_paths_without_v1_prefix(upstream: UpstreamServer) -> None:
    with httpx.Client(base_url=upstream.root_url, trust_env=False) as http:
        r = http.post(
            "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Echo: hi"
        assert http.get("/models").json()["object"] == "list"
        r = http.post("/v1/chat/completions", json={"model": "m"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        r = http.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert http.get("/v1/nothing").status_code == 404
        assert http.post("/_control/configure", json={"nope": 1}).status_code == 400
        assert http.post("/_control/faults", json={"faults": [{"kind": "weird"}]}).status_code == 400


def test_control_api_serves_concurrent_requests(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    # a hanging request must not block the control API or other requests
    upstream.add_faults({"kind": "timeout"})
    with (
        httpx.Client(base_url=upstream.base_url, trust_env=False, timeout=0.3) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.post(
            "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert upstream.stats()["chat_per_model"] == {"m": 1}


def test_api_key_required() -> None:
    with UpstreamServer(api_key="sekret", models=["only-one"]) as srv:
        bad = openai.OpenAI(api_key="wrong", base_url=srv.base_url, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as exc:
            bad.chat.completions.create(model="m", messages=MESSAGES)
        assert exc.value.code == "invalid_api_key"
        good = openai.OpenAI(api_key="sekret", base_url=srv.base_url, max_retries=0)
        assert [m.id for m in good.models.list()] == ["only-one"]
        assert good.chat.completions.create(model="m", messages=MESSAGES).choices
        # health and control are not behind the key
        assert httpx.get(srv.root_url + "/health", trust_env=False).status_code == 200
        assert srv.stats()["unauthorized"] == 1
        bad.close()
        good.close()
