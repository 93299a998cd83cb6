"""The async views in the OpenAPI schema.

`/v1/chat/completions`, `/v1/embeddings` and `/api/v1/jobs/{id}/events` are plain
async Django views (served without DRF, see aiplatform/asgi.py), which
drf-spectacular cannot see. This post-processing hook describes them, so the
interactive docs show them and the schema fuzzer (tests/security/test_fuzz.py)
sends them generated requests like every other operation.
"""

from __future__ import annotations

import copy
from typing import Any

from .v1.embeddings import MAX_EMBEDDING_DIMENSIONS, MAX_EMBEDDING_INPUTS, MAX_TOKEN_ID

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "code": {"type": "string", "nullable": True},
                "message": {"type": "string"},
                "param": {"type": "string", "nullable": True},
            },
        }
    },
}
_SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}]


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {"description": "OpenAI's error body", "content": {"application/json": {"schema": _ERROR}}}
        for status in statuses
    }


def _chat_request(components: dict[str, Any]) -> dict[str, Any]:
    """The job's request plus what only /v1 takes."""
    schema = copy.deepcopy(components["JobCreateRequest"])
    schema["description"] = "OpenAI's chat completion request (the fields the platform takes)."
    schema["properties"].update(
        {
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "n": {"type": "integer", "minimum": 1, "maximum": 128},
            "user": {"type": "string", "maxLength": 512},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
        }
    )
    return schema


_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}}
_EMBEDDINGS_REQUEST = {
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string"},
        "input": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_EMBEDDING_INPUTS,
                    "items": {"type": "string", "minLength": 1},
                },
                {**_TOKENS, "maxItems": MAX_EMBEDDING_INPUTS},
                {"type": "array", "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS, "items": _TOKENS},
            ]
        },
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1, "maximum": MAX_EMBEDDING_DIMENSIONS},
        "user": {"type": "string"},
    },
}


# Examples for the docs, and the fuzzer's starting points (a request that is
# admitted reaches the worker and the provider).
CHAT_EXAMPLE = {"model": "local-small", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
EMBEDDINGS_EXAMPLE = {"model": "local-small", "input": "The capital of France"}


def add_async_views(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular POSTPROCESSING_HOOKS entry."""
    components = result.get("components", {}).get("schemas", {})
    if "JobCreateRequest" not in components:
        return result
    paths = result.setdefault("paths", {})
    jobs_create = paths.get("/api/v1/jobs", {}).get("post", {}).get("requestBody", {}).get("content", {})
    if "application/json" in jobs_create:
        jobs_create["application/json"]["example"] = {**CHAT_EXAMPLE, "max_tokens": 32, "metadata": {"ticket": "42"}}
    paths["/v1/chat/completions"] = {
        "post": {
            "operationId": "v1_chat_completions_create",
            "summary": "OpenAI's chat completions: a job the caller waits for, or its stream of chunks",
            "tags": ["v1"],
            "security": _SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _chat_request(components), "example": CHAT_EXAMPLE}},
            },
            "responses": {
                "200": {
                    "description": "a chat.completion, or chat.completion.chunk events with `stream: true`",
                    "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
                },
                **_errors(400, 401, 403, 404, 409, 413, 429, 502, 503, 504),
            },
        }
    }
    paths["/v1/embeddings"] = {
        "post": {
            "operationId": "v1_embeddings_create",
            "summary": "OpenAI's embeddings, passed through to the model's provider",
            "tags": ["v1"],
            "security": _SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _EMBEDDINGS_REQUEST, "example": EMBEDDINGS_EXAMPLE}},
            },
            "responses": {
                "200": {"description": "OpenAI's embeddings list", "content": {"application/json": {}}},
                **_errors(400, 401, 403, 404, 413, 429, 502, 503, 504),
            },
        }
    }
    paths["/api/v1/jobs/{job_id}/events"] = {
        "get": {
            "operationId": "api_v1_jobs_events",
            "summary": "A job's events as server-sent events (resumable with Last-Event-ID or ?after=)",
            "tags": ["api"],
            "security": _SECURITY,
            "parameters": [
                {"in": "path", "name": "job_id", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {"in": "header", "name": "Last-Event-ID", "schema": {"type": "string"}},
                {"in": "query", "name": "after", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "delta, usage, fallback, then done or error",
                    "content": {"text/event-stream": {}},
                },
                **_errors(400, 401, 404, 429),
            },
        }
    }
    return result
