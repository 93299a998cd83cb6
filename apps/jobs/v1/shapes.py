"""OpenAI's Chat Completions shapes built from a job and its events: the
completion id, the assistant's message with its tool calls, tool-call deltas,
the usage object with its details and cost, one chunk."""

from __future__ import annotations

import json
from typing import Any

from apps.billing.money import usd_string

from ..models import Job


def completion_id(job: Job) -> str:
    return f"chatcmpl-{job.pk.hex}"


def job_usage(job: Job) -> dict[str, Any]:
    return openai_usage(
        prompt=job.input_tokens or 0,
        completion=job.output_tokens or 0,
        cached=job.cached_input_tokens or 0,
        reasoning=job.reasoning_tokens or 0,
        cost_micros=job.cost_micros,
    )


def openai_usage(
    *, prompt: int, completion: int, cached: int, reasoning: int, cost_micros: int | None
) -> dict[str, Any]:
    """OpenAI's usage object, with its details, and what the call cost (`cost_usd`,
    a decimal string: ours, beside OpenAI's fields)."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
        "cost_usd": usd_string(cost_micros),
    }


Answer = tuple[list[str], list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]


def assemble(calls: list[dict[str, Any]], event: dict[str, Any]) -> None:
    """Add a `tool_call` event's piece to the calls (OpenAI's shape)."""
    index = event["index"]
    while len(calls) <= index:
        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index]
    if event.get("id"):
        call["id"] = event["id"]
    if event.get("name"):
        call["function"]["name"] += event["name"]
    call["function"]["arguments"] += event.get("arguments", "")


def assistant_message(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant's message: its text (null when it only called tools), its tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return message


def tool_call_delta(event: dict[str, Any]) -> dict[str, Any]:
    """A `tool_call` event as a chunk's delta: the call's head (id, type, name) with
    its first piece, argument fragments after."""
    call: dict[str, Any] = {"index": event["index"]}
    function: dict[str, Any] = {"arguments": event.get("arguments", "")}
    if event.get("id"):
        call["id"], call["type"] = event["id"], "function"
    if event.get("name"):
        function["name"] = event["name"]
    call["function"] = function
    return {"tool_calls": [call]}


def usage_from_event(event: dict[str, Any]) -> dict[str, Any]:
    return openai_usage(
        prompt=event["input_tokens"],
        completion=event["output_tokens"],
        cached=event.get("cached_tokens") or 0,
        reasoning=event.get("reasoning_tokens") or 0,
        cost_micros=event.get("cost_micros"),
    )


def chunk_bytes(job: Job, created: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    chunk = {
        "id": completion_id(job),
        "object": "chat.completion.chunk",
        "created": created,
        "model": job.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
