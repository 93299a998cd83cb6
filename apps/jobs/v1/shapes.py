"""OpenAI's Chat Completions shapes built from a job and its events: the
completion id, the assistant's message with its tool calls, tool-call deltas,
the usage object with its details and cost, one chunk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from apps.billing.money import usd_string
from apps.llm.capabilities import legacy_functions

from ..events import finish_reasons, stored_answer_events
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


@dataclass
class ChoiceAnswer:
    """One choice of an answer: its text pieces, tool calls, refusal, logprobs."""

    pieces: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    def take(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "delta":
            self.pieces.append(event["text"])
        elif kind == "tool_call":
            assemble(self.calls, event)
        elif kind == "refusal":
            self.refusal.append(event["text"])
        elif kind == "logprobs":
            self.logprobs.extend(event["content"])


ANSWER_PIECES = frozenset({"delta", "tool_call", "refusal", "logprobs"})


@dataclass
class Answer:
    """An answer assembled from a job's events: each choice (n > 1: several, by
    the events' `choice`), the usage, what served it, and the closing event."""

    final: dict[str, Any]
    choices: dict[int, ChoiceAnswer] = field(default_factory=lambda: {0: ChoiceAnswer()})
    usage: dict[str, Any] | None = None
    served: dict[str, Any] = field(default_factory=dict)  # model, service_tier, system_fingerprint

    @classmethod
    def of_job(cls, job: Job) -> Answer:
        """A stored answer (a finished job's)."""
        final: dict[str, Any] = {"type": "done", "status": job.status, "finish_reason": job.finish_reason}
        if job.choices:
            final["finish_reasons"] = finish_reasons(job)
        answer = cls(final, usage=job_usage(job), served=job_served(job))
        for event in stored_answer_events(job):
            answer.take(event)
        return answer

    def take(self, event: dict[str, Any]) -> None:
        """One event of the answer's stream (not its closing one)."""
        kind = event["type"]
        if kind in ANSWER_PIECES:
            self.choices.setdefault(event.get("choice", 0), ChoiceAnswer()).take(event)
        elif kind in ("fallback", "restart"):  # the next model, or a new attempt, starts over
            self.choices = {0: ChoiceAnswer()}
        elif kind == "usage":
            self.usage = usage_from_event(event)
            self.served = {name: event.get(name) for name in ("model", "service_tier", "system_fingerprint")}


def job_served(job: Job) -> dict[str, Any]:
    """What served a stored answer: the model that answered, the provider's tier
    and fingerprint."""
    return {
        "model": job.answered_by or job.model,
        "service_tier": job.service_tier or None,
        "system_fingerprint": job.system_fingerprint or None,
    }


def completion_body(job: Job, answer: Answer, usage: dict[str, Any]) -> dict[str, Any]:
    """The non-stream answer: every choice's message, finish reason and logprobs."""
    legacy = legacy_functions(job.params)  # asked with the legacy functions: answered with function_call
    reasons = answer.final.get("finish_reasons") or [answer.final["finish_reason"]]
    choices = []
    for index in sorted(answer.choices):
        choice = answer.choices[index]
        message = assistant_message("".join(choice.pieces), choice.calls, "".join(choice.refusal))
        reason = reasons[index] if index < len(reasons) else None
        choices.append(
            {
                "index": index,
                "message": as_function_call(message) if legacy else message,
                "finish_reason": legacy_finish(reason) if legacy else reason,
                "logprobs": {"content": choice.logprobs, "refusal": None} if choice.logprobs else None,
            }
        )
    return {
        "id": completion_id(job),
        "object": "chat.completion",
        "created": int(job.created_at.timestamp()),
        "model": answer.served.get("model") or job.model,  # the model that answered (a fallback step, a rollout)
        "choices": choices,
        "usage": usage,
        "service_tier": answer.served.get("service_tier"),
        "system_fingerprint": answer.served.get("system_fingerprint"),
    }


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


def assistant_message(text: str, calls: list[dict[str, Any]], refusal: str = "") -> dict[str, Any]:
    """The assistant's message: its text (null when it only called tools or
    declined), its tool calls, its refusal."""
    empty = None if calls or refusal else ""
    message: dict[str, Any] = {"role": "assistant", "content": text or empty, "refusal": refusal or None}
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


def chunk_bytes(
    job: Job,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    index: int = 0,
) -> bytes:
    chunk = {
        "id": completion_id(job),
        "object": "chat.completion.chunk",
        "created": created,
        "model": job.model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def as_function_call(message: dict[str, Any]) -> dict[str, Any]:
    """A message with tool calls as the legacy functions answer it: the first call
    as `function_call` (the legacy API has one call per answer)."""
    calls = message.pop("tool_calls", None)
    if calls:
        message["function_call"] = dict(calls[0]["function"])
    return message


def function_call_delta(event: dict[str, Any]) -> dict[str, Any] | None:
    """A `tool_call` event as the legacy stream's delta.function_call (the first
    call's pieces only), or None for the pieces of any other call."""
    if event["index"] != 0:
        return None
    call: dict[str, Any] = {"arguments": event.get("arguments", "")}
    if event.get("name"):
        call["name"] = event["name"]
    return {"function_call": call}


def legacy_finish(finish_reason: str | None) -> str | None:
    return "function_call" if finish_reason == "tool_calls" else finish_reason
