"""A job's event stream: the worker appends, any number of listeners read.

One Redis Stream per job, `aip:<schema>:job:<id>` (tenant-scoped by key). Entries
carry one JSON field `d`: `delta` (text), `tool_call` (a piece of a tool call:
index, the id and name with its first piece, a fragment of its arguments),
`refusal` (text), `logprobs` (entries), `fallback`, `restart` (a new attempt
starts over: its `attempt`), `usage`, `done` (final
status, finish reason) or `error` (type, message). With n > 1, the pieces of a
choice after the first carry its index as `choice`, and `done` lists every
choice's finish reason (`finish_reasons`). Deltas are coalesced: at most one entry per
JOB_STREAM_COALESCE_MS per job, so a thousand concurrent streams do not mean tens
of thousands of writes a second. Each stream is capped (MAXLEN ~) and every
append sets its expiry in the same round trip: while the job runs, the longest a
job may run plus JOB_STREAM_TTL_SECONDS (refreshed by each entry), and
JOB_STREAM_TTL_SECONDS from its closing events. So no stream outlives its job
for long, whatever ends it (a job deleted mid-run, a failed final write, a
worker that died); the final result stays in Postgres.
The entry id is the SSE event id, so a listener resumes exactly where it left off.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from typing import Any

import redis
from django.conf import settings
from redis.commands.core import Script

from apps.core.redis import redis_client
from apps.tenants.db import current_schema

FINAL_EVENTS = frozenset({"done", "error"})


def stream_key(*, schema: str, job_id: uuid.UUID | str) -> str:
    return f"aip:{schema}:job:{job_id}"


def _redis() -> redis.Redis:
    return redis_client()


def _encode(event: dict[str, Any]) -> dict[str, str]:
    return {"d": json.dumps(event, separators=(",", ":"), ensure_ascii=False)}


# KEYS: the job's stream, then (optional) its cancel flag, then (optional) its
# fence. ARGV: MAXLEN, the TTL to set, the writer's attempt, then the encoded
# events. Appends nothing once the flag is set (a cancelled job's stream ended at
# the cancel's closing event), nor for an attempt older than the fence: the first
# write of each attempt raises the fence to it, so a worker that was taken over
# (stalled, not dead) cannot splice its text into the new attempt's.
_APPEND = """
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if KEYS[3] then
  local attempt = tonumber(ARGV[3])
  local fence = tonumber(redis.call('GET', KEYS[3]) or '0')
  if fence > attempt then return 0 end
  if fence < attempt then redis.call('SET', KEYS[3], attempt, 'EX', tonumber(ARGV[2])) end
end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'd', ARGV[i])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


@functools.cache
def _append_script() -> Script:
    return _redis().register_script(_APPEND)


class EventRelay:
    """Worker side: buffers deltas and appends them at most once per coalescing
    window. Not shared between jobs; called from the thread running the job.

    Every write is one script that appends and sets the stream's expiry. With
    `cancel_flag` (the worker's relay: see apps/jobs/stops.py) it first checks the
    job's cancel flag, so nothing lands after a cancel's closing event."""

    def __init__(
        self, *, job_id: uuid.UUID, schema: str | None = None, cancel_flag: str | None = None, attempt: int = 0
    ) -> None:
        self.key = stream_key(schema=schema or current_schema(), job_id=job_id)
        self.keys = [self.key, cancel_flag] if cancel_flag else [self.key]
        if cancel_flag and attempt:  # the worker's relay: fenced by its attempt
            self.keys.append(f"{self.key}:fence")
        self.attempt = attempt
        self.window = settings.JOB_STREAM_COALESCE_MS / 1000
        self.maxlen = settings.JOB_STREAM_MAXLEN
        self.buffer: list[str | dict[str, Any]] = []
        self.last_flush = 0.0
        self.lock = threading.Lock()

    def delta(self, text: str) -> None:
        self.buffer.append(text)
        if time.monotonic() - self.last_flush >= self.window:
            self.flush()

    def part(self, part: dict[str, Any]) -> None:
        """A typed piece (a tool call's, a refusal's, logprobs), coalesced like text."""
        self.buffer.append(part)
        if time.monotonic() - self.last_flush >= self.window:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            events, self.buffer = coalesce(self.buffer), []
            self._write(live_ttl_seconds(), tuple(events))
        self.last_flush = time.monotonic()

    def event(self, event: dict[str, Any]) -> None:
        """Append an event now, after the deltas buffered before it."""
        self.flush()
        self._append(event)

    def final(self, *events: dict[str, Any]) -> None:
        """Flush, append the closing events and start the stream's expiry clock."""
        self.flush()
        self._write(settings.JOB_STREAM_TTL_SECONDS, events)

    def _append(self, event: dict[str, Any]) -> None:
        self._write(live_ttl_seconds(), (event,))

    def _write(self, ttl: int, events: tuple[dict[str, Any], ...]) -> None:
        _append_script()(
            keys=self.keys, args=[self.maxlen, ttl, self.attempt, *(_encode(event)["d"] for event in events)]
        )


def stream_read(*, schema: str, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every event the job's stream still holds, oldest first."""
    entries: Any = _redis().xrange(stream_key(schema=schema, job_id=job_id))
    return [json.loads(fields[b"d"]) for _, fields in entries or ()]


def coalesce(pieces: list[str | dict[str, Any]]) -> list[dict[str, Any]]:
    """Buffered pieces as events, in order: adjacent text is one `delta`, adjacent
    argument fragments of one tool call one `tool_call` (a new id or name starts
    a new event, so a listener sees each call's head once), adjacent refusal text
    one `refusal`, logprobs one `logprobs`; pieces of different choices (n > 1:
    `choice`, absent for the first) never merge. Text and its logprobs arrive
    interleaved (a token, its logprob): each merges past the other, so a window
    of them is two events, not one per token."""
    events: list[dict[str, Any]] = []
    for raw in pieces:
        piece = {"type": "delta", "text": raw} if isinstance(raw, str) else raw
        kind, choice = piece["type"], piece.get("choice", 0)
        last = events[-1] if events else None
        if kind in ("delta", "logprobs") and len(events) >= 2 and last is not None:
            other = "logprobs" if kind == "delta" else "delta"
            before = events[-2]
            if (
                last["type"] == other
                and before["type"] == kind
                and last.get("choice", 0) == choice
                and before.get("choice", 0) == choice
            ):
                _merge(before, piece)  # merge past the interleaved other kind
                continue
        same = last is not None and last["type"] == kind and last.get("choice", 0) == choice
        if same and kind == "tool_call":  # one call's fragments, not the head of another
            same = last is not None and last["index"] == piece["index"] and not {"id", "name"} & set(piece)
        if same and last is not None:
            _merge(last, piece)
            continue
        events.append(dict(piece))
    return events


def _merge(event: dict[str, Any], piece: dict[str, Any]) -> None:
    kind = piece["type"]
    if kind in ("delta", "refusal"):
        event["text"] += piece["text"]
    elif kind == "tool_call":
        event["arguments"] += piece["arguments"]
    else:
        event["content"] = [*event["content"], *piece["content"]]


def tool_call_events(tool_calls: list[dict[str, Any]] | None, choice: int = 0) -> list[dict[str, Any]]:
    """Whole tool calls as the events a streamed one would have been (one each)."""
    return [
        {
            "type": "tool_call",
            "index": index,
            "id": call.get("id", ""),
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            **({"choice": choice} if choice else {}),
        }
        for index, call in enumerate(tool_calls or [])
    ]


def stored_answer_events(job: Any) -> list[dict[str, Any]]:
    """A stored answer (a job's, a cached one's) as the events its stream carried,
    whole: each choice's text, tool calls, refusal and logprobs (a choice after
    the first, n > 1, marked with its `choice` index)."""
    events: list[dict[str, Any]] = []
    for choice in [
        {
            "index": 0,
            "output": job.output,
            "tool_calls": job.tool_calls,
            "refusal": job.refusal,
            "logprobs": job.logprobs,
        },
        *(job.choices or ()),
    ]:
        index = int(choice["index"])
        mark = {"choice": index} if index else {}
        if choice.get("output"):
            events.append({"type": "delta", "text": choice["output"], **mark})
        events.extend(tool_call_events(choice.get("tool_calls"), index))
        if choice.get("refusal"):
            events.append({"type": "refusal", "text": choice["refusal"], **mark})
        if choice.get("logprobs"):
            events.append({"type": "logprobs", "content": choice["logprobs"], **mark})
    return events


def finish_reasons(job: Any) -> list[str]:
    """Each choice's finish reason, the first's first."""
    return [job.finish_reason, *(str(choice.get("finish_reason") or "") for choice in job.choices or ())]


def answered_events(result: Any, *, cost: int, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A call's closing events: its usage (with what it cost, the model that
    answered, the tier that served it) and `done` (each choice's finish reason)."""
    usage = {
        "type": "usage",
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "estimated": result.usage_estimated,
        "cached_tokens": result.cached_tokens,
        "reasoning_tokens": result.reasoning_tokens,
        "cost_micros": cost,
        "model": model,  # the model that answered (a fallback step)
        "service_tier": result.service_tier or None,
        "system_fingerprint": result.system_fingerprint or None,
    }
    done: dict[str, Any] = {"type": "done", "status": "succeeded", "finish_reason": result.finish_reason}
    if result.choices:
        done["finish_reasons"] = [result.finish_reason, *(choice["finish_reason"] for choice in result.choices)]
    return usage, done


def live_ttl_seconds() -> int:
    """A running job's stream expiry, refreshed by each entry: the longest a job
    may run (its task's hard limit, or the longest model deadline with one call
    on top) and the finished stream's time, so a stream whose job never closes it
    (deleted, its worker lost) still goes."""
    longest = max(
        int(settings.CELERY_TASK_TIME_LIMIT), settings.JOB_TIMEOUT_MAX_SECONDS + settings.LLM_REQUEST_TIMEOUT_SECONDS
    )
    return longest + settings.JOB_STREAM_TTL_SECONDS


def job_events_close(*, job_id: uuid.UUID, status: str) -> None:
    """Tell listeners a job ended without a worker saying so (e.g. cancelled while queued)."""
    EventRelay(job_id=job_id).final({"type": "done", "status": status, "finish_reason": None})
