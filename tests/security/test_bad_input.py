"""Hostile and malformed input over real HTTP (uvicorn, the real ASGI app): each
case answers a 4xx in the API's error shape naming the field, never a 500.

The cases are the ones the hardening issue names (a cursor that decodes to a
non-date, deeply nested JSON, a non-object `metadata` on /v1, mixed-type
embeddings input, a webhook port of 99999, explicit nulls, ids and numbers out
of range) and their neighbours."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.support import Personas, http_client

USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": "local-small", "messages": USER}
DEEP = ("[" * 100_000 + "]" * 100_000).encode()
DEEP_OBJECT = b'{"model": "local-small", "messages": ' + DEEP + b"}"


def _cursor(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


# (name, method, path, JSON body or raw bytes, expected status, expected param or None)
JOBS_CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    ("cursor_not_a_date", "GET", "/api/v1/jobs?cursor=cD14", None, 400, "cursor"),
    ("cursor_garbage", "GET", "/api/v1/jobs?cursor=%%%", None, 400, "cursor"),
    (
        "cursor_bad_offset",
        "GET",
        f"/api/v1/jobs?cursor={_cursor('o=-5&p=2026-01-01')}",
        None,
        400,
        "cursor",
    ),
    ("limit_not_a_number", "GET", "/api/v1/jobs?limit=abc", None, 200, None),
    ("limit_huge", "GET", "/api/v1/jobs?limit=99999999999999999999999", None, 200, None),
    ("status_unknown", "GET", "/api/v1/jobs?status=exploded", None, 400, "status"),
    ("job_id_not_a_uuid", "GET", "/api/v1/jobs/not-a-uuid", None, 404, "id"),
    ("job_id_huge", "GET", "/api/v1/jobs/" + "9" * 400, None, 404, "id"),
    ("cancel_not_a_uuid", "POST", "/api/v1/jobs/xyz/cancel", None, 404, "id"),
    ("events_not_a_uuid", "GET", "/api/v1/jobs/xyz/events", None, 404, "id"),
    ("deep_json", "POST", "/api/v1/jobs", DEEP_OBJECT, 400, None),
    ("body_not_json", "POST", "/api/v1/jobs", b"{nope", 400, None),
    ("body_a_list", "POST", "/api/v1/jobs", [1, 2], 400, None),
    ("body_null", "POST", "/api/v1/jobs", None, 400, None),
    ("model_null", "POST", "/api/v1/jobs", {**CHAT, "model": None}, 400, "model"),
    ("messages_null", "POST", "/api/v1/jobs", {**CHAT, "messages": None}, 400, "messages"),
    ("message_null", "POST", "/api/v1/jobs", {**CHAT, "messages": [None]}, 400, "messages.0"),
    (
        "content_null",
        "POST",
        "/api/v1/jobs",
        {**CHAT, "messages": [{"role": "user", "content": None}]},
        400,
        "messages.0.content",
    ),
    (
        "role_a_number",
        "POST",
        "/api/v1/jobs",
        {**CHAT, "messages": [{"role": 5, "content": "x"}]},
        400,
        "messages.0.role",
    ),
    (
        "part_not_object",
        "POST",
        "/api/v1/jobs",
        {**CHAT, "messages": [{"role": "user", "content": [5]}]},
        400,
        "messages.0.content.0",
    ),
    ("max_tokens_huge", "POST", "/api/v1/jobs", {**CHAT, "max_tokens": 10**30}, 400, "max_tokens"),
    ("max_tokens_float", "POST", "/api/v1/jobs", {**CHAT, "max_tokens": 1.5}, 400, "max_tokens"),
    ("max_tokens_string", "POST", "/api/v1/jobs", {**CHAT, "max_tokens": "many"}, 400, "max_tokens"),
    ("max_tokens_negative", "POST", "/api/v1/jobs", {**CHAT, "max_tokens": -1}, 400, "max_tokens"),
    ("temperature_huge", "POST", "/api/v1/jobs", {**CHAT, "temperature": 1e308}, 400, "temperature"),
    (
        "temperature_nan",
        "POST",
        "/api/v1/jobs",
        b'{"model": "local-small", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        400,
        None,
    ),
    (
        "temperature_infinity",
        "POST",
        "/api/v1/jobs",
        b'{"model": "local-small", "messages": [{"role": "user", "content": "x"}], "top_p": Infinity}',
        400,
        None,
    ),
    ("metadata_a_list", "POST", "/api/v1/jobs", {**CHAT, "metadata": ["a"]}, 400, "metadata"),
    ("metadata_nested", "POST", "/api/v1/jobs", {**CHAT, "metadata": {"a": {"b": 1}}}, 400, "metadata"),
    ("stop_numbers", "POST", "/api/v1/jobs", {**CHAT, "stop": [1, 2]}, 400, "stop"),
    (
        "webhook_port_99999",
        "POST",
        "/api/v1/jobs",
        {**CHAT, "webhook": {"url": "https://example.com:99999/h"}},
        400,
        "webhook.url",
    ),
    ("webhook_null", "POST", "/api/v1/jobs", {**CHAT, "webhook": None}, 400, "webhook"),
    ("webhook_url_a_number", "POST", "/api/v1/jobs", {**CHAT, "webhook": {"url": 5}}, 400, "webhook.url"),
    ("cache_null", "POST", "/api/v1/jobs", {**CHAT, "cache": None}, 400, "cache"),
    ("cache_ttl_huge", "POST", "/api/v1/jobs", {**CHAT, "cache": {"ttl": 10**30}}, 400, "cache.ttl"),
    ("fallbacks_null", "POST", "/api/v1/jobs", {**CHAT, "fallbacks": None}, 400, "fallbacks"),
    ("fallbacks_objects", "POST", "/api/v1/jobs", {**CHAT, "fallbacks": [{}]}, 400, "fallbacks.0"),
    ("stream_a_string", "POST", "/api/v1/jobs", {**CHAT, "stream": "maybe"}, 400, "stream"),
    ("model_long", "POST", "/api/v1/jobs", {**CHAT, "model": "m" * 10_000}, 400, "model"),
    (
        "nul_in_content",
        "POST",
        "/api/v1/jobs",
        {**CHAT, "messages": [{"role": "user", "content": "a\u0000b"}]},
        400,
        "messages.0.content",
    ),
    (
        "lone_surrogate",
        "POST",
        "/api/v1/jobs",
        b'{"model": "local-small", "messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "messages.0.content",
    ),
    ("idempotency_key_long", "POST", "/api/v1/jobs", CHAT, 400, "Idempotency-Key"),
    ("usage_group_unknown", "GET", "/api/v1/usage?group_by=planet", None, 400, "group_by"),
    ("usage_since_not_a_date", "GET", "/api/v1/usage?since=2026-13-45", None, 400, "since"),
    ("usage_since_year_zero", "GET", "/api/v1/usage?since=0000-01-01", None, 400, "since"),
]

V1_CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    (
        "v1_metadata_a_list_with_user",
        "POST",
        "/v1/chat/completions",
        {**CHAT, "metadata": ["a"], "user": "u"},
        400,
        "metadata",
    ),
    ("v1_metadata_a_string", "POST", "/v1/chat/completions", {**CHAT, "metadata": "x"}, 400, "metadata"),
    ("v1_deep_json", "POST", "/v1/chat/completions", DEEP_OBJECT, 400, None),
    ("v1_body_not_json", "POST", "/v1/chat/completions", b"{nope", 400, None),
    ("v1_body_a_list", "POST", "/v1/chat/completions", [1], 400, None),
    (
        "v1_stream_options_a_list",
        "POST",
        "/v1/chat/completions",
        {**CHAT, "stream_options": [1]},
        400,
        "stream_options",
    ),
    ("v1_n_a_string", "POST", "/v1/chat/completions", {**CHAT, "n": "two"}, 400, "n"),
    ("v1_n_huge", "POST", "/v1/chat/completions", {**CHAT, "n": 10**30}, 400, "n"),
    ("v1_user_an_object", "POST", "/v1/chat/completions", {**CHAT, "user": {"a": 1}}, 400, "user"),
    (
        "v1_max_completion_tokens_string",
        "POST",
        "/v1/chat/completions",
        {**CHAT, "max_completion_tokens": "x"},
        400,
        "max_completion_tokens",
    ),
    ("v1_model_a_list", "POST", "/v1/chat/completions", {**CHAT, "model": ["a"]}, 400, "model"),
    (
        "v1_lone_surrogate",
        "POST",
        "/v1/chat/completions",
        b'{"model": "local-small", "messages": [{"role": "user", "content": "\\udfff"}]}',
        400,
        "messages.0.content",
    ),
    (
        "v1_embeddings_mixed_input",
        "POST",
        "/v1/embeddings",
        {"model": "local-small", "input": ["a", 5]},
        400,
        "input",
    ),
    (
        "v1_embeddings_mixed_tokens",
        "POST",
        "/v1/embeddings",
        {"model": "local-small", "input": [[1, "a"]]},
        400,
        "input",
    ),
    (
        "v1_embeddings_nested_lists",
        "POST",
        "/v1/embeddings",
        {"model": "local-small", "input": [[[1]]]},
        400,
        "input",
    ),
    (
        "v1_embeddings_ints_and_lists",
        "POST",
        "/v1/embeddings",
        {"model": "local-small", "input": [1, [2]]},
        400,
        "input",
    ),
    (
        "v1_embeddings_huge_token",
        "POST",
        "/v1/embeddings",
        {"model": "local-small", "input": [10**30]},
        400,
        "input",
    ),
    (
        "v1_embeddings_empty_string_item",
        "POST",
        "/v1/embeddings",
        {"model": "local-small", "input": ["a", ""]},
        400,
        "input",
    ),
    ("v1_embeddings_bool", "POST", "/v1/embeddings", {"model": "local-small", "input": [True]}, 400, "input"),
    ("v1_embeddings_model_a_list", "POST", "/v1/embeddings", {"model": ["x"], "input": "a"}, 400, "model"),
    (
        "v1_embeddings_dimensions_string",
        "POST",
        "/v1/embeddings",
        {"model": "local-small", "input": "a", "dimensions": "x"},
        400,
        "dimensions",
    ),
    ("v1_embeddings_deep_json", "POST", "/v1/embeddings", DEEP_OBJECT, 400, None),
    ("v1_model_detail_long", "GET", "/v1/models/" + "x" * 5000, None, 404, "model"),
]


def _send(client: Any, method: str, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    if isinstance(body, bytes):
        return client.request(
            method, path, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
    if method == "GET":
        return client.request(method, path, headers=headers)
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "status", "param"),
    JOBS_CASES + V1_CASES,
    ids=[case[0] for case in JOBS_CASES + V1_CASES],
)
def test_hostile_input_is_a_clear_4xx(
    platform_server, committed_personas: Personas, name, method, path, body, status, param
):
    headers = {"Idempotency-Key": "k" * 300} if name == "idempotency_key_long" else None
    with http_client(platform_server, committed_personas.alice.key) as client:
        response = _send(client, method, path, body, headers)
    assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
    if status >= 400:
        error = response.json()["error"]
        assert error["message"], name
        if param is not None:
            assert error["param"] == param, f"{name}: {error}"
