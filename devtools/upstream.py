"""Fake OpenAI-compatible LLM provider: a raw ASGI app served by uvicorn.

Used by the test suite as the upstream provider (tests never reach the internet)
and by ``make run`` for `local-small` when the local model (requirements/local.txt) is not installed.

API routes (answered with and without the ``/v1`` prefix):

  POST /v1/chat/completions  ``chat.completion`` JSON, or SSE chunks when
                             ``"stream": true``. The reply is deterministic:
                             ``"Echo: " + <last user message text>`` (or the
                             configured fixed ``reply``), split into word pieces
                             (``\\s*\\S+``), cut at ``max_completion_tokens`` /
                             ``max_tokens`` pieces (then finish_reason is
                             ``length``). completion_tokens = pieces emitted;
                             prompt_tokens = words in all messages + 3 per message.
                             With ``tools`` and a user message last: tool calls
                             (the tool ``tool_choice`` names, else those the user's
                             text names, else the first), arguments an instance of
                             each tool's schema, streamed as a head then
                             8-character argument fragments; after tool results:
                             ``"Tool results: " + their texts``. ``response_format``
                             json_object: ``{"echo": <text>}``; json_schema: an
                             instance of the schema (strings are the user's text).
                             ``service_tier`` in the answer and every chunk: the
                             request's (``auto`` as ``default``), or the
                             configured one; absent when neither names one.
  POST /v1/embeddings        deterministic unit vectors from a hash of the input
                             (1536 dims unless ``dimensions``): a fixed per-dimension
                             float32 basis with hash-chosen signs, so different
                             inputs are near-orthogonal. Float JSON carries the
                             shortest decimal of each float32 (as OpenAI does);
                             ``encoding_format: "base64"`` gives little-endian float32.
  GET  /v1/models            configured model ids; GET /v1/models/{id} (404 if unknown)
  GET  /health               ``{"ok": true}``

Control API (for tests, never behind the API key):

  GET  /_control/stats       counters (incl. max_chat_in_flight), last 50 requests (method, path, headers, body),
                             pending faults, current settings
  POST /_control/reset       counters, faults and settings back to the start options;
                             requests hanging on a timeout fault answer 503
  POST /_control/configure   {"latency_ms", "chunk_delay_ms", "stream_usage",
                              "nonstream_usage", "reply", "embedding_aliases",
                              "error_rates", "usage_details", "reasoning",
                              "service_tier"}
                             (any subset)
  POST /_control/faults      {"faults": [fault, ...]} appended to a queue. A fault:
                             kind "error" (default) | "timeout" | "cut_stream";
                             model (null = any); status (default 500); message,
                             type, code (OpenAI-like defaults per status), param;
                             retry_after (seconds, sent as Retry-After); times
                             (default 1, -1 = forever); after_chunks (cut_stream);
                             endpoint "chat" (default) | "embeddings" | "any".
                             Each matching request consumes one use of the first
                             matching fault. cut_stream on a non-stream chat call
                             sends the headers and half the body, then closes.

Programmatic use: :func:`create_app` and :class:`UpstreamServer`.
CLI: ``python -m devtools.upstream --host 127.0.0.1 --port 9100``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import operator
import random
import re
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Self

from devtools.serve import ThreadedUvicorn

__all__ = [
    "DEFAULT_MODELS",
    "ASGIApp",
    "UpstreamApp",
    "UpstreamServer",
    "create_app",
    "main",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MODELS: tuple[str, ...] = ("local-small", "gpt-4o", "gpt-4o-mini")
DEFAULT_EMBEDDING_DIM = 1536
MAX_EMBEDDING_DIM = 8192
HANG_SECONDS = 3600.0
HANG_POLL_SECONDS = 0.25
LAST_REQUESTS = 50
FINGERPRINT = "fp_devtools"
MODEL_CREATED = 1700000000

_WORD_RE = re.compile(r"\s*\S+")
_enc_str: Callable[[str], str] = json.encoder.encode_basestring_ascii
_dumps = json.JSONEncoder(separators=(",", ":")).encode

_CT_JSON = (b"content-type", b"application/json")
_CT_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_NO_CACHE = (b"cache-control", b"no-cache")
_OK = b'{"ok":true}'

_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "latency_ms": (int, float),
    "chunk_delay_ms": (int, float),
    "stream_usage": (bool,),
    "nonstream_usage": (bool,),
    "reply": (str, type(None)),
    # {text: other text}: `text` is embedded as `other text` is (a paraphrase at
    # similarity 1.0), for tests of semantic matching.
    "embedding_aliases": (dict,),
    # {model: probability}: that share of its chat requests answer 500 (seeded, so
    # a run is repeatable), for benchmarks of fallbacks under partial failure.
    "error_rates": (dict,),
    # {"cached_tokens": n, "reasoning_tokens": m}: what usage details report (a
    # prompt cache hit, a reasoning model), for tests of their pricing.
    "usage_details": (dict,),
    # A reasoning model's thinking, streamed as `reasoning_content` before the answer
    # (vLLM's and DeepSeek's field), and in a non-stream message.
    "reasoning": (str, type(None)),
    # The service tier every answer reports (a project set to that tier), "" for
    # none (a server that says nothing); null: the tier the request named, "auto"
    # answered as "default" (OpenAI's, for a project on default), none when it named none.
    "service_tier": (str, type(None)),
}
_FAULT_KINDS = ("error", "timeout", "cut_stream")
_FAULT_ENDPOINTS = ("chat", "embeddings", "any")

# Set inside a request task that deliberately drops the connection mid-response,
# so uvicorn's "ASGI callable returned without completing response." is not logged
# for it (and still is for any other app in the process).
_CUTTING: contextvars.ContextVar[bool] = contextvars.ContextVar("devtools_upstream_cutting", default=False)


class _CutFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _CUTTING.get()


_cut_filter = _CutFilter()


def _install_cut_filter() -> None:
    lg = logging.getLogger("uvicorn.error")
    if _cut_filter not in lg.filters:
        lg.addFilter(_cut_filter)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _error_body(message: str, etype: str, code: str | None, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": etype, "param": param, "code": code}}).encode()


def _default_error(status: int) -> tuple[str, str, str | None]:
    """(message, type, code) resembling what OpenAI answers for ``status``."""
    if status == 429:
        return (
            "Rate limit reached for requests (injected by devtools upstream).",
            "requests",
            "rate_limit_exceeded",
        )
    if status == 401:
        return "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
    if status == 403:
        return (
            "You are not allowed to sample from this model.",
            "permission_error",
            None,
        )
    if status == 404:
        return (
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )
    if 400 <= status < 500:
        return (
            "Invalid request (injected by devtools upstream).",
            "invalid_request_error",
            None,
        )
    return (
        "The server had an error while processing your request (injected).",
        "server_error",
        None,
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _usage(prompt: int, completion: int, details: dict[str, int] | None = None) -> dict[str, Any]:
    details = details or {}
    reasoning = int(details.get("reasoning_tokens", 0))
    completion += reasoning  # reasoning tokens are part of the completion's
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": min(prompt, int(details.get("cached_tokens", 0))),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


ARGUMENT_FRAGMENT = 8  # characters per streamed tool-call arguments fragment
REFUSE_MARK = "[refuse]"  # a user message with this is refused (structured-output refusals)
REFUSAL = "I can't help with that."


def _logprob(token: str, top: int) -> dict[str, Any]:
    """A fixed logprob entry for a piece of the answer (and its `top` alternatives)."""
    entry = {"token": token, "logprob": -0.25, "bytes": list(token.encode())}
    return {**entry, "top_logprobs": [entry, {"token": "x", "logprob": -3.0, "bytes": [120]}][: max(0, top)]}


def _instance(schema: Any, text: str, root: Any = None, depth: int = 0) -> Any:
    """A value that satisfies a JSON schema (the subset tools and structured
    outputs use: types, properties, items, enum, const, anyOf/oneOf/allOf, $ref to
    $defs), its strings filled with `text`: deterministic, so tests can expect it."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _instance(target, text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if not (isinstance(o, dict) and o.get("type") == "null")), options[0])
            return _instance(chosen, text, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: _instance(sub, text, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems") or 0))
        if schema.get("maxItems") == 0:
            count = 0
        return [_instance(schema.get("items") or {}, text, root, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    formats = {"date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "email": "a@example.com"}
    value = formats.get(schema.get("format", ""), text or "x")
    return value.ljust(int(schema.get("minLength") or 0), "x")


def _chosen_tools(tools: list[Any], tool_choice: Any, text: str, parallel: bool) -> list[dict[str, Any]]:
    """The tools the fake model calls: the one `tool_choice` names; else every
    tool whose name the user's message mentions (only the first unless parallel
    calls are allowed); else the first tool."""
    functions = [t for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        return [t for t in functions if t["function"].get("name") == name][:1]
    named = [t for t in functions if str(t["function"].get("name", "")) in text]
    if not named:
        return functions[:1]
    return named if parallel else named[:1]


def _tool_calls(body: dict[str, Any], messages: list[Any], last_user: str, cid: str) -> list[dict[str, Any]] | None:
    """Tool calls for this request, or None when the model answers in text: a
    request with tools whose last message is the user's (not a tool result), and
    a tool_choice other than "none"."""
    tools = body.get("tools")
    last = messages[-1] if messages else None
    if not isinstance(tools, list) or not tools or body.get("tool_choice") == "none":
        return None
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    chosen = _chosen_tools(tools, body.get("tool_choice"), last_user, body.get("parallel_tool_calls") is not False)
    return [
        {
            "id": f"call_{cid[-12:]}{index}",
            "type": "function",
            "function": {
                "name": tool["function"].get("name", ""),
                "arguments": _dumps(_instance(tool["function"].get("parameters") or {}, last_user)),
            },
        }
        for index, tool in enumerate(chosen)
    ]


def _tool_results(messages: list[Any]) -> str | None:
    """The text answer to tool results: what the tools returned, after the last
    assistant message (None when the last message is not a tool result)."""
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "tool":
        return None
    results: list[str] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        results.append(_text_of(message.get("content")))
    return "Tool results: " + "; ".join(reversed(results))


def _structured(body: dict[str, Any], last_user: str) -> str | None:
    """A JSON answer for response_format json_object ({"echo": ...}) or
    json_schema (an instance of the schema), else None."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return _dumps({"echo": last_user})
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return _dumps(_instance(schema, last_user))
    return None


_LOW_BIT = bytes(i & 1 for i in range(256))
_SIGN_BYTE = bytes((i & 1) << 7 for i in range(256))


@dataclasses.dataclass
class _Choice:
    """One choice of a fake answer, whole (non-stream) or as its SSE chunks."""

    index: int
    pieces: list[str]
    refusal: list[str]
    tool_calls: list[dict[str, Any]] | None
    logprobs: list[dict[str, Any]] | None
    finish: str

    def fragments(self) -> list[tuple[int, str]]:
        """Each tool call's arguments in ARGUMENT_FRAGMENT-character pieces."""
        return [
            (index, call["function"]["arguments"][at : at + ARGUMENT_FRAGMENT])
            for index, call in enumerate(self.tool_calls or [])
            for at in range(0, len(call["function"]["arguments"]), ARGUMENT_FRAGMENT)
        ]

    @property
    def tokens(self) -> int:
        return len(self.pieces) + len(self.fragments()) + len(self.refusal)

    def whole(self, reasoning: str | None) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.tool_calls or self.refusal else "".join(self.pieces),
            "refusal": "".join(self.refusal) or None,
            "annotations": [],
        }
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if reasoning:
            message["reasoning_content"] = reasoning
        logprobs = {"content": self.logprobs, "refusal": None} if self.logprobs is not None else None
        return {"index": self.index, "message": message, "logprobs": logprobs, "finish_reason": self.finish}

    def chunks(self, head: bytes, tail: bytes, reasoning: str | None) -> list[bytes]:
        """The role chunk, the content chunks, the finish chunk."""
        mid = b',"logprobs":null,"finish_reason":'
        role = b'{"role":"assistant","content":%s,"refusal":null}' % (b"null" if self.tool_calls else b'""')
        out = [head + role + mid + b"null" + tail]
        if not self.index:
            out += [
                head + b'{"reasoning_content":' + _enc_str(p).encode() + b"}" + mid + b"null" + tail
                for p in _WORD_RE.findall(reasoning or "")
            ]
        out += [head + b'{"refusal":' + _enc_str(p).encode() + b"}" + mid + b"null" + tail for p in self.refusal]
        if self.logprobs is None:
            out += [head + b'{"content":' + _enc_str(p).encode() + b"}" + mid + b"null" + tail for p in self.pieces]
        else:
            out += [
                head
                + b'{"content":'
                + _enc_str(p).encode()
                + b'},"logprobs":'
                + _dumps({"content": [entry], "refusal": None}).encode()
                + b',"finish_reason":null'
                + tail
                for p, entry in zip(self.pieces, self.logprobs, strict=True)
            ]
        fragments = self.fragments()
        for index, call in enumerate(self.tool_calls or []):
            opening = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            out.append(head + b'{"tool_calls":[' + _dumps(opening).encode() + b"]}" + mid + b"null" + tail)
            for fragment_index, fragment in fragments:
                if fragment_index == index:
                    delta = {"index": index, "function": {"arguments": fragment}}
                    out.append(head + b'{"tool_calls":[' + _dumps(delta).encode() + b"]}" + mid + b"null" + tail)
        out.append(head + b"{}" + mid + b'"' + self.finish.encode() + b'"' + tail)
        return out


def _short_f32(x: float) -> str:
    """Shortest decimal that reads back as the float32 ``x`` (what OpenAI's float JSON carries)."""
    for p in range(1, 10):
        s = f"{x:.{p}g}"
        if struct.unpack("<f", struct.pack("<f", float(s)))[0] == x:
            return s
    return repr(x)


class _Basis:
    """A fixed unit vector of ``dim`` float32 components, built once per dimension.

    An input's embedding is this vector with the signs of its components flipped by
    hash bits: deterministic, exactly as long (unit), near-orthogonal for different
    inputs, and built at C speed (no per-component Python math per request).
    """

    __slots__ = ("bits", "texts")

    def __init__(self, dim: int) -> None:
        rng = random.Random(0x5EED0000 + dim)
        g = [rng.gauss(0.0, 1.0) for _ in range(dim)]
        norm = math.hypot(*g) or 1.0
        packed = struct.pack(f"<{dim}f", *[v / norm for v in g])
        self.bits = int.from_bytes(packed, "little")
        # texts[i] = (component i as JSON, the same with the sign flipped)
        self.texts = tuple((_short_f32(v).encode(), _short_f32(-v).encode()) for v in struct.unpack(f"<{dim}f", packed))


class _Fault:
    __slots__ = (
        "after_chunks",
        "code",
        "endpoint",
        "etype",
        "kind",
        "message",
        "model",
        "param",
        "retry_after",
        "status",
        "times",
    )

    def __init__(self, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise _BadRequest("each fault must be an object", "faults")
        known = set(self.__slots__) | {"type"}
        unknown = set(spec) - known
        if unknown:
            raise _BadRequest(f"unknown fault field(s): {sorted(unknown)}", "faults")
        self.model: str | None = spec.get("model")
        if self.model is not None and not isinstance(self.model, str):
            raise _BadRequest("fault 'model' must be a string or null", "faults")
        self.endpoint: str = spec.get("endpoint") or "chat"
        if self.endpoint not in _FAULT_ENDPOINTS:
            raise _BadRequest(f"fault 'endpoint' must be one of {_FAULT_ENDPOINTS}", "faults")
        self.kind: str = spec.get("kind") or "error"
        if self.kind not in _FAULT_KINDS:
            raise _BadRequest(f"fault 'kind' must be one of {_FAULT_KINDS}", "faults")
        status = spec.get("status", 500)
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise _BadRequest("fault 'status' must be an int in 400..599", "faults")
        self.status: int = status
        dmsg, dtype, dcode = _default_error(status)
        self.message: str = str(spec.get("message") or dmsg)
        self.etype: str = str(spec.get("type") or spec.get("etype") or dtype)
        self.code: str | None = spec.get("code", dcode)
        self.param: str | None = spec.get("param")
        retry_after = spec.get("retry_after")
        if retry_after is not None and (not isinstance(retry_after, (int, float)) or isinstance(retry_after, bool)):
            raise _BadRequest("fault 'retry_after' must be a number", "faults")
        self.retry_after: int | float | None = retry_after
        times = spec.get("times", 1)
        if not isinstance(times, int) or isinstance(times, bool) or times == 0 or times < -1:
            raise _BadRequest("fault 'times' must be a positive int, or -1 for unlimited", "faults")
        self.times: int = times
        after_chunks = spec.get("after_chunks", 0)
        if not isinstance(after_chunks, int) or isinstance(after_chunks, bool) or after_chunks < 0:
            raise _BadRequest("fault 'after_chunks' must be an int >= 0", "faults")
        self.after_chunks: int = after_chunks

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "endpoint": self.endpoint,
            "kind": self.kind,
            "status": self.status,
            "message": self.message,
            "type": self.etype,
            "code": self.code,
            "retry_after": self.retry_after,
            "times": self.times,
            "after_chunks": self.after_chunks,
        }


class UpstreamApp:
    """The ASGI callable. All mutable state lives on the instance (one event loop)."""

    def __init__(
        self,
        *,
        models: list[str] | None = None,
        api_key: str | None = None,
        latency_ms: int = 0,
        chunk_delay_ms: int = 0,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    ) -> None:
        self.models: list[str] = list(models) if models else list(DEFAULT_MODELS)
        self._auth: bytes | None = ("Bearer " + api_key).encode("latin-1") if api_key else None
        self.embedding_dim = embedding_dim
        self._start_settings: dict[str, Any] = {
            "latency_ms": latency_ms,
            "chunk_delay_ms": chunk_delay_ms,
            "stream_usage": True,
            "nonstream_usage": True,
            "reply": None,
            "embedding_aliases": {},
            "error_rates": {},
            "usage_details": {},
            "reasoning": None,
            "service_tier": None,
        }
        self._ids = itertools.count(1)
        self._id_prefix = "%08x" % (int(time.time() * 1000) & 0xFFFFFFFF)
        self._models_body = _dumps({"object": "list", "data": [self._model_obj(m) for m in self.models]}).encode()
        self._bases: dict[int, _Basis] = {}
        self._closing = False
        self._generation = 0
        self._routes: dict[str, tuple[str, Callable[[Scope, Receive, Send], Awaitable[None]]]] = {
            "/chat/completions": ("POST", self._chat),
            "/embeddings": ("POST", self._embeddings),
            "/models": ("GET", self._list_models),
        }
        self._apply_reset()

    # ----------------------------------------------------------------- state
    def _apply_reset(self) -> None:
        s = self._start_settings
        self.latency = max(0.0, s["latency_ms"] / 1000.0)
        self.chunk_delay = max(0.0, s["chunk_delay_ms"] / 1000.0)
        self.stream_usage: bool = s["stream_usage"]
        self.nonstream_usage: bool = s["nonstream_usage"]
        self.reply: str | None = s["reply"]
        self.embedding_aliases: dict[str, str] = dict(s["embedding_aliases"])
        self.error_rates: dict[str, float] = dict(s["error_rates"])
        self.usage_details: dict[str, int] = dict(s["usage_details"])
        self.reasoning: str | None = s["reasoning"]
        self.service_tier: str | None = s["service_tier"]
        self._error_rng = random.Random(7)
        self.faults: list[_Fault] = []
        self.total = 0
        self.per_path: dict[str, int] = {}
        self.chat_per_model: dict[str, int] = {}
        self.embeddings_per_model: dict[str, int] = {}
        self.chat_streams = 0
        self.chat_in_flight = getattr(self, "chat_in_flight", 0)  # a reset does not end requests in flight
        self.max_chat_in_flight = 0  # most chat requests served at once since the reset
        self.faults_triggered = 0
        self.unauthorized = 0
        self.last: deque[tuple[str, str, Any, Any]] = deque(maxlen=LAST_REQUESTS)
        # Wakes requests hanging on a "timeout" fault (they answer 503).
        self._generation += 1

    def settings(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency * 1000.0,
            "chunk_delay_ms": self.chunk_delay * 1000.0,
            "stream_usage": self.stream_usage,
            "nonstream_usage": self.nonstream_usage,
            "reply": self.reply,
            "embedding_aliases": self.embedding_aliases,
            "error_rates": self.error_rates,
            "usage_details": self.usage_details,
            "reasoning": self.reasoning,
            "service_tier": self.service_tier,
        }

    def configure(self, **kw: Any) -> None:
        for key, value in kw.items():
            types = _SETTING_TYPES.get(key)
            if types is None:
                raise _BadRequest(f"unknown setting {key!r}; known: {sorted(_SETTING_TYPES)}", key)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise _BadRequest(f"bad value for {key!r}: {value!r}", key)
        for key, value in kw.items():
            if key == "latency_ms":
                self.latency = max(0.0, value / 1000.0)
            elif key == "chunk_delay_ms":
                self.chunk_delay = max(0.0, value / 1000.0)
            else:
                setattr(self, key, value)

    def add_faults(self, specs: list[Any]) -> None:
        self.faults.extend([_Fault(s) for s in specs])  # all validated before any is added

    def stats(self) -> dict[str, Any]:
        last = [
            {
                "method": method,
                "path": path,
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
                "body": body,
            }
            for method, path, headers, body in self.last
        ]
        return {
            "total_requests": self.total,
            "per_path": dict(self.per_path),
            "chat_per_model": dict(self.chat_per_model),
            "embeddings_per_model": dict(self.embeddings_per_model),
            "chat_streams": self.chat_streams,
            "max_chat_in_flight": self.max_chat_in_flight,
            "faults_triggered": self.faults_triggered,
            "unauthorized": self.unauthorized,
            "last_bodies": [r["body"] for r in last if r["body"] is not None],
            "last_requests": last,
            "faults": [f.as_dict() for f in self.faults],
            "settings": self.settings(),
        }

    def shutdown(self) -> None:
        """Thread-safe: make hanging requests answer 503 and slow streams stop."""
        self._closing = True

    def _take_fault(self, endpoint: str, model: str) -> _Fault | None:
        for i, f in enumerate(self.faults):
            if f.endpoint != "any" and f.endpoint != endpoint:
                continue
            if f.model is not None and f.model != model:
                continue
            if f.times > 0:
                f.times -= 1
                if f.times == 0:
                    del self.faults[i]
            self.faults_triggered += 1
            return f
        return None

    # ------------------------------------------------------------------- ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stype = scope["type"]
        if stype != "http":
            if stype == "lifespan":
                while True:
                    msg = await receive()
                    if msg["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif msg["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        path: str = scope["path"]
        if path.startswith("/_control/"):
            await self._control(path, scope, receive, send)
            return
        if path == "/health":
            await _send_bytes(send, 200, _OK)
            return
        self.total += 1
        self.per_path[path] = self.per_path.get(path, 0) + 1
        sub = path[3:] if path.startswith("/v1/") else path
        route = self._routes.get(sub)
        handler: Callable[[Scope, Receive, Send], Awaitable[None]]
        if route is not None:
            if scope["method"] != route[0]:
                await _send_error(
                    send,
                    405,
                    f"Method {scope['method']} not allowed on {path}.",
                    "invalid_request_error",
                    "method_not_allowed",
                )
                return
            handler = route[1]
        elif sub.startswith("/models/") and scope["method"] == "GET":
            handler = self._get_model
        else:
            self.last.append((scope["method"], path, scope["headers"], None))
            await _send_error(
                send,
                404,
                f"Unknown request URL: {scope['method']} {path}.",
                "invalid_request_error",
                "unknown_url",
            )
            return
        if self._auth is not None and not self._authorized(scope):
            self.unauthorized += 1
            self.last.append((scope["method"], path, scope["headers"], None))
            await _send_error(
                send,
                401,
                "Incorrect API key provided.",
                "invalid_request_error",
                "invalid_api_key",
            )
            return
        if handler != self._chat:
            await handler(scope, receive, send)
            return
        self.chat_in_flight += 1
        self.max_chat_in_flight = max(self.max_chat_in_flight, self.chat_in_flight)
        try:
            await handler(scope, receive, send)
        finally:
            self.chat_in_flight -= 1

    def _authorized(self, scope: Scope) -> bool:
        for k, v in scope["headers"]:
            if k == b"authorization":
                return bool(v == self._auth)
        return False

    async def _read_json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        msg = await receive()
        raw = msg.get("body", b"")
        if msg.get("more_body"):
            parts = [raw]
            while msg.get("more_body"):
                msg = await receive()
                parts.append(msg.get("body", b""))
            raw = b"".join(parts)
        try:
            body = json.loads(raw)
        except ValueError:
            self.last.append((scope["method"], scope["path"], scope["headers"], None))
            raise _BadRequest("We could not parse the JSON body of your request.") from None
        self.last.append((scope["method"], scope["path"], scope["headers"], body))
        if not isinstance(body, dict):
            raise _BadRequest("The request body must be a JSON object.")
        return body

    # ------------------------------------------------------------------ chat
    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._read_json(scope, receive)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise _BadRequest("you must provide a model parameter", "model")
            self.chat_per_model[model] = self.chat_per_model.get(model, 0) + 1
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest("'messages' must be a non-empty array.", "messages")
            limit = body.get("max_completion_tokens")
            if limit is None:
                limit = body.get("max_tokens")
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise _BadRequest("max_tokens must be an integer >= 1.", "max_tokens")
        except _BadRequest as exc:
            await _send_error(send, 400, exc.message, "invalid_request_error", None, exc.param)
            return
        stream = body.get("stream") is True
        if stream:
            self.chat_streams += 1

        fault = self._take_fault("chat", model) if self.faults else None
        if fault is not None and fault.kind == "timeout":
            await self._hang(receive, send)
            return
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None and fault.kind == "error":
            await _send_fault(send, fault)
            return
        if self.error_rates.get(model, 0) and self._error_rng.random() < self.error_rates[model]:
            self.faults_triggered += 1
            await _send_error(send, 500, "injected failure (error_rates)", "server_error", None)
            return

        prompt_tokens = 0
        last_user = ""
        for m in messages:
            prompt_tokens += 3
            if isinstance(m, dict):
                text = _text_of(m.get("content"))
                prompt_tokens += len(text.split())
                if m.get("role") == "user":
                    last_user = text
        cid = f"chatcmpl-{self._id_prefix}{next(self._ids):012d}"
        n = body.get("n")
        n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1
        answers = [self._answer(body, messages, last_user, cid, index, limit) for index in range(n)]
        completion_tokens = sum(a.tokens for a in answers)
        created = int(time.time())
        headers = [(b"x-request-id", ("req_" + cid[9:]).encode())]
        tier = self.service_tier
        if tier is None:
            asked = body.get("service_tier")
            tier = ("default" if asked == "auto" else asked) if isinstance(asked, str) else ""
        if not stream:
            payload: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [a.whole(self.reasoning) for a in answers],
                "system_fingerprint": FINGERPRINT,
            }
            if tier:
                payload["service_tier"] = tier
            if self.nonstream_usage:
                payload["usage"] = _usage(prompt_tokens, completion_tokens, self.usage_details)
            out = _dumps(payload).encode()
            if fault is not None:  # cut_stream on a non-stream request: half a body, then close
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            _CT_JSON,
                            (b"content-length", b"%d" % len(out)),
                            *headers,
                        ],
                    }
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": out[: len(out) // 2],
                        "more_body": True,
                    }
                )
                _install_cut_filter()
                _CUTTING.set(True)
                return
            await _send_bytes(send, 200, out, headers)
            return

        so = body.get("stream_options")
        send_usage = self.stream_usage and isinstance(so, dict) and so.get("include_usage") is True
        opening = (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,%s"system_fingerprint":"%s"'
            % (
                cid.encode(),
                created,
                _enc_str(model).encode(),
                b'"service_tier":%s,' % _enc_str(tier).encode() if tier else b"",
                FINGERPRINT.encode(),
            )
        )
        tail = b"}]" + (b',"usage":null' if send_usage else b"") + b"}\n\n"
        streams = [
            a.chunks(opening + b',"choices":[{"index":%d,"delta":' % a.index, tail, self.reasoning) for a in answers
        ]
        first = b"".join(chunks[0] for chunks in streams)
        # The choices' pieces interleaved, as a provider streams them.
        chunks = [c for row in itertools.zip_longest(*(chunks[1:-1] for chunks in streams)) for c in row if c]
        end = b"".join(chunks[-1] for chunks in streams)
        if send_usage:
            end += (
                b"data: "
                + _dumps(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": FINGERPRINT,
                        **({"service_tier": tier} if tier else {}),
                        "choices": [],
                        "usage": _usage(prompt_tokens, completion_tokens, self.usage_details),
                    }
                ).encode()
                + b"\n\n"
            )
        end += b"data: [DONE]\n\n"
        cut = fault is not None and fault.kind == "cut_stream"
        if cut:
            assert fault is not None
            chunks = chunks[: fault.after_chunks]

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_CT_SSE, _NO_CACHE, *headers],
            }
        )
        delay = self.chunk_delay
        if not delay:
            if cut:
                await send(
                    {
                        "type": "http.response.body",
                        "body": first + b"".join(chunks),
                        "more_body": True,
                    }
                )
            else:
                await send(
                    {
                        "type": "http.response.body",
                        "body": first + b"".join(chunks) + end,
                    }
                )
        else:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            gone = asyncio.ensure_future(_until_disconnect(receive))
            gen = self._generation
            try:
                for c in chunks:
                    await asyncio.sleep(delay)
                    if gone.done() or self._closing or gen != self._generation:
                        cut = True
                        break
                    await send({"type": "http.response.body", "body": c, "more_body": True})
                if not cut:
                    await asyncio.sleep(delay)
                    await send({"type": "http.response.body", "body": end})
            finally:
                gone.cancel()
        if cut:
            # Return without completing the response: uvicorn closes the connection.
            _install_cut_filter()
            _CUTTING.set(True)

    def _answer(
        self, body: dict[str, Any], messages: list[Any], last_user: str, cid: str, index: int, limit: int | None
    ) -> _Choice:
        """Choice `index` of the answer (n > 1: each after the first starts "Choice <index>: ")."""
        tool_calls = _tool_calls(body, messages, last_user, cid)
        if tool_calls and index:
            for call in tool_calls:
                call["id"] += f"_{index}"
        reply = _tool_results(messages) or _structured(body, last_user)
        if reply is None:
            reply = self.reply if self.reply is not None else "Echo: " + last_user
        if index:
            reply = f"Choice {index}: {reply}"
        refusing = not tool_calls and REFUSE_MARK in last_user
        refusal = _WORD_RE.findall(REFUSAL) if refusing else []
        pieces = [] if tool_calls or refusing else _WORD_RE.findall(reply)
        finish = "tool_calls" if tool_calls else "stop"
        top = body["top_logprobs"] if isinstance(body.get("top_logprobs"), int) else 0
        if limit is not None and len(pieces) > limit:
            pieces = pieces[:limit]
            finish = "length"
        logprobs = [_logprob(p, top) for p in pieces] if body.get("logprobs") is True else None
        return _Choice(index, pieces, refusal, tool_calls, logprobs, finish)

    async def _hang(self, receive: Receive, send: Send) -> None:
        """Answer nothing until the client disconnects, a reset/shutdown, or HANG_SECONDS."""
        gone = asyncio.ensure_future(_until_disconnect(receive))
        gen = self._generation
        deadline = time.monotonic() + HANG_SECONDS
        try:
            while not gone.done():
                if self._closing or gen != self._generation:
                    await _send_error(
                        send,
                        503,
                        "The upstream is shutting down or was reset.",
                        "server_error",
                        None,
                    )
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    await _send_error(
                        send,
                        504,
                        "Injected timeout elapsed.",
                        "server_error",
                        "timeout",
                    )
                    return
                await asyncio.wait({gone}, timeout=min(HANG_POLL_SECONDS, remaining))
        finally:
            gone.cancel()

    # ------------------------------------------------------------ embeddings
    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._read_json(scope, receive)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise _BadRequest("you must provide a model parameter", "model")
            self.embeddings_per_model[model] = self.embeddings_per_model.get(model, 0) + 1
            inp = body.get("input")
            items: list[Any]
            if isinstance(inp, str):
                items = [inp]
            elif isinstance(inp, list) and inp:
                items = [inp] if isinstance(inp[0], int) else inp
            else:
                raise _BadRequest("'input' must be a string or a non-empty array.", "input")
            dim = body.get("dimensions")
            if dim is None:
                dim = self.embedding_dim
            elif not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_EMBEDDING_DIM:
                raise _BadRequest(
                    f"'dimensions' must be an int in 1..{MAX_EMBEDDING_DIM}.",
                    "dimensions",
                )
            fmt = body.get("encoding_format") or "float"
            if fmt not in ("float", "base64"):
                raise _BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
        except _BadRequest as exc:
            await _send_error(send, 400, exc.message, "invalid_request_error", None, exc.param)
            return
        fault = self._take_fault("embeddings", model) if self.faults else None
        if fault is not None and fault.kind == "timeout":
            await self._hang(receive, send)
            return
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault is not None:  # "error" (cut_stream is treated as an error here too)
            await _send_fault(send, fault)
            return
        b64 = fmt == "base64"
        parts = []
        tokens = 0
        for i, item in enumerate(items):
            if isinstance(item, str):
                key = self.embedding_aliases.get(item, item)
                tokens += max(1, len(item.split()))
            elif isinstance(item, list):
                key = _dumps(item)
                tokens += len(item)
            else:
                await _send_error(
                    send,
                    400,
                    "'input' items must be strings or token arrays.",
                    "invalid_request_error",
                    None,
                    "input",
                )
                return
            parts.append(b'{"object":"embedding","index":%d,"embedding":%s}' % (i, self._embedding(key, dim, b64)))
        out = (
            b'{"object":"list","data":['
            + b",".join(parts)
            + b'],"model":'
            + _enc_str(model).encode()
            + b',"usage":{"prompt_tokens":%d,"total_tokens":%d}}' % (tokens, tokens)
        )
        await _send_bytes(send, 200, out)

    def _embedding(self, key: str, dim: int, b64: bool) -> bytes:
        basis = self._bases.get(dim)
        if basis is None:
            basis = self._bases[dim] = _Basis(dim)
        # one hash byte per component; its low bit flips that component's sign
        signs = hashlib.shake_256(key.encode("utf-8", "surrogatepass")).digest(dim)
        if b64:
            mask = bytearray(4 * dim)
            mask[3::4] = signs.translate(_SIGN_BYTE)  # the sign bit is the top bit of byte 3 (LE)
            packed = (int.from_bytes(mask, "little") ^ basis.bits).to_bytes(4 * dim, "little")
            return b'"' + base64.b64encode(packed) + b'"'
        return b"[" + b",".join(map(operator.getitem, basis.texts, signs.translate(_LOW_BIT))) + b"]"

    # ---------------------------------------------------------------- models
    @staticmethod
    def _model_obj(mid: str) -> dict[str, Any]:
        return {
            "id": mid,
            "object": "model",
            "created": MODEL_CREATED,
            "owned_by": "devtools-upstream",
        }

    async def _list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.last.append((scope["method"], scope["path"], scope["headers"], None))
        await _send_bytes(send, 200, self._models_body)

    async def _get_model(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.last.append((scope["method"], scope["path"], scope["headers"], None))
        path: str = scope["path"]
        mid = path[path.index("/models/") + 8 :]
        if mid in self.models:
            await _send_bytes(send, 200, _dumps(self._model_obj(mid)).encode())
        else:
            await _send_error(
                send,
                404,
                f"The model '{mid}' does not exist",
                "invalid_request_error",
                "model_not_found",
            )

    # --------------------------------------------------------------- control
    async def _control(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        name = path[len("/_control/") :]
        method = scope["method"]
        try:
            if name == "stats" and method == "GET":
                await _send_bytes(send, 200, _dumps(self.stats()).encode())
                return
            if method != "POST" or name not in ("reset", "configure", "faults"):
                await _send_error(
                    send,
                    404,
                    f"Unknown control endpoint: {method} {path}",
                    "invalid_request_error",
                    "unknown_url",
                )
                return
            msg = await receive()
            raw = msg.get("body", b"")
            while msg.get("more_body"):
                msg = await receive()
                raw += msg.get("body", b"")
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise _BadRequest("invalid JSON body") from None
            if not isinstance(body, dict):
                raise _BadRequest("the body must be a JSON object")
            if name == "reset":
                self._apply_reset()
                await _send_bytes(send, 200, _OK)
            elif name == "configure":
                self.configure(**body)
                await _send_bytes(
                    send,
                    200,
                    _dumps({"ok": True, "settings": self.settings()}).encode(),
                )
            else:
                faults = body.get("faults")
                if not isinstance(faults, list):
                    raise _BadRequest("'faults' must be an array", "faults")
                self.add_faults(faults)
                await _send_bytes(
                    send,
                    200,
                    _dumps({"ok": True, "pending": len(self.faults)}).encode(),
                )
        except _BadRequest as exc:
            await _send_error(send, 400, exc.message, "invalid_request_error", None, exc.param)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_bytes(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    h = [_CT_JSON, (b"content-length", b"%d" % len(body))]
    if headers:
        h.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Send,
    status: int,
    message: str,
    etype: str,
    code: str | None,
    param: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await _send_bytes(send, status, _error_body(message, etype, code, param), headers)


async def _send_fault(send: Send, fault: _Fault) -> None:
    headers = None
    if fault.retry_after is not None:
        ra = fault.retry_after
        value = str(int(ra)) if float(ra).is_integer() else str(ra)
        headers = [(b"retry-after", value.encode())]
    await _send_error(send, fault.status, fault.message, fault.etype, fault.code, fault.param, headers)


def create_app(
    *,
    models: list[str] | None = None,
    api_key: str | None = None,
    latency_ms: int = 0,
    chunk_delay_ms: int = 0,
) -> UpstreamApp:
    """A fresh fake-provider ASGI app (an :data:`ASGIApp`) with its own state."""
    return UpstreamApp(
        models=models,
        api_key=api_key,
        latency_ms=latency_ms,
        chunk_delay_ms=chunk_delay_ms,
    )


class UpstreamServer:
    """Runs :func:`create_app` under uvicorn in a daemon thread on ``host`` and a free port.

    Usable as a context manager. ``base_url`` ends in ``/v1`` (what OpenAI clients want);
    ``root_url`` has no path. The helpers talk to the control API over HTTP.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, **create_app_kwargs: Any) -> None:
        self.app = create_app(**create_app_kwargs)
        self._serve = ThreadedUvicorn(self.app, host=host, port=port, name="devtools-upstream")
        self._client: Any = None

    @property
    def host(self) -> str:
        return self._serve.host

    @property
    def port(self) -> int:
        return self._serve.port

    @property
    def root_url(self) -> str:
        return self._serve.url

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def start(self) -> None:
        import httpx

        self._serve.start()
        self._client = httpx.Client(base_url=self.root_url, timeout=10.0, trust_env=False)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        # Answer pending timeout faults first so the server can shut down promptly.
        self.app.shutdown()
        self._serve.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------- control helpers
    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self._client is None:
            raise RuntimeError("UpstreamServer is not running")
        r = self._client.post(path, json=payload)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def stats(self) -> dict[str, Any]:
        if self._client is None:
            raise RuntimeError("UpstreamServer is not running")
        r = self._client.get("/_control/stats")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def reset(self) -> None:
        self._post("/_control/reset", {})

    def configure(self, **kw: Any) -> None:
        self._post("/_control/configure", kw)

    def add_faults(self, *faults: dict[str, Any]) -> None:
        self._post("/_control/faults", {"faults": list(faults)})


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m devtools.upstream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="delay before the first byte (default 0)",
    )
    p.add_argument(
        "--chunk-delay-ms",
        type=int,
        default=0,
        help="delay between stream chunks (default 0)",
    )
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="ids listed by GET /v1/models",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="if set, require 'Authorization: Bearer KEY' on the API",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = _parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    app = create_app(
        models=models or None,
        api_key=args.api_key,
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
    )
    print(
        f"devtools upstream on http://{args.host}:{args.port}/v1 (models: {', '.join(app.models)})",
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
