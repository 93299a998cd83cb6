"""A job's events as OpenAI's `chat.completion.chunk` stream: a role chunk per
choice, the pieces of each choice as they arrive (text, tool calls, refusal,
logprobs; with n > 1, each in its choice's `index`), a finish chunk per choice,
the usage chunk when asked for, then `data: [DONE]`. A restart (the job's
worker was lost and a new attempt starts over) is invisible when the lost
attempt had shown nothing, or when the new attempt's text re-says what it had
shown (the stream goes on from there); otherwise it ends with an error."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from apps.core.errors import error_body
from apps.core.threads import in_thread
from apps.llm.capabilities import legacy_functions

from ..leases import StreamLease
from ..models import Job, JobStatus
from ..sse import HEARTBEAT, job_event_stream, load_job
from .common import job_failure
from .shapes import (
    chunk_bytes,
    completion_id,
    function_call_delta,
    job_served,
    job_usage,
    legacy_finish,
    tool_call_delta,
    usage_from_event,
)


def _data(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class Resume:
    """A stream resumed after a restart: the new attempt's first choice re-says
    the text the client was shown, then goes on."""

    shown: str
    attempt: int
    replayed: str = ""

    def take(self, text: str) -> str | None:
        """What of `text` is past what was shown ("" while it only repeats it);
        None when the new answer differs from what was shown."""
        self.replayed += text
        common = min(len(self.replayed), len(self.shown))
        if self.replayed[:common] != self.shown[:common]:
            return None
        return self.replayed[len(self.shown) :] if len(self.replayed) > len(self.shown) else ""

    def caught_up(self) -> bool:
        return self.replayed == self.shown


def _restart_error(job: Job, attempt: int) -> bytes:
    # OpenAI's chunks cannot take back text a client has shown: end with an error
    # (the SDK raises it) rather than splice two answers together.
    return _data(
        error_body(
            error_type="server_error",
            code="job_restarted",
            message=f"The job's worker was lost mid-answer and attempt {attempt} answered differently: its complete"
            f" answer will be at GET /api/v1/jobs/{job.pk}.",
        )
    )


async def job_chunks(schema: str, job: Job, include_usage: bool, lease: StreamLease) -> AsyncIterator[bytes]:
    """The chunks of the job's answer. A failed job sends an `error` event (the SDK
    raises it) and no [DONE]."""
    created = int(time.time())
    legacy = legacy_functions(job.params)
    choices = int(job.params.get("n") or 1)
    for index in range(choices):
        yield chunk_bytes(job, created, {"role": "assistant", "content": ""}, index=index)
    usage: dict[str, Any] | None = None
    served: dict[str, Any] = {}  # the model that answered, the tier that served it: from the usage event
    sent = False  # any content yet
    shown = ""  # the first choice's text, while it is all the client has
    only_text = True
    resume: Resume | None = None  # after a restart: the new attempt's text until it passes `shown`
    async for _, event in job_event_stream(schema, job, lease=lease):
        kind = event["type"]
        index = event.get("choice", 0)
        if resume is not None and kind in ("delta", "tool_call", "refusal", "logprobs", "done"):
            if kind == "delta" and index == 0:
                ahead = resume.take(event["text"])
                if ahead is None:
                    yield _restart_error(job, resume.attempt)
                    return
                if not ahead:
                    continue
                event, resume = {**event, "text": ahead}, None
            elif kind == "logprobs":
                continue  # they describe text the client has
            elif resume.caught_up():
                resume = None
            else:  # the new answer went another way than what the client was shown
                yield _restart_error(job, resume.attempt)
                return
        if event is HEARTBEAT[1]:
            yield b": keep-alive\n\n"
        elif kind == "delta":
            sent = True
            if index == 0 and only_text:
                shown += event["text"]
            else:
                only_text = False
            yield chunk_bytes(job, created, {"content": event["text"]}, index=index)
        elif kind == "restart":
            if not sent:  # the lost attempt had shown nothing: the new one streams on seamlessly
                continue
            if not only_text:  # tool calls or other choices cannot be matched up: say so
                yield _restart_error(job, event["attempt"])
                return
            # The new attempt's text continues the stream where it passes what was shown
            # (a deterministic model says the same again); where it differs, an error.
            resume = Resume(shown, event["attempt"])
        elif kind == "tool_call":
            only_text = False
            sent = True
            delta = function_call_delta(event) if legacy else tool_call_delta(event)
            if delta is not None:
                yield chunk_bytes(job, created, delta, index=index)
        elif kind == "refusal":
            sent, only_text = True, False
            yield chunk_bytes(job, created, {"refusal": event["text"]}, index=index)
        elif kind == "logprobs":
            logprobs = {"content": event["content"], "refusal": None}
            yield chunk_bytes(job, created, {}, logprobs=logprobs, index=index)
        elif kind == "fallback":
            if not sent:  # nothing shown yet: the next model's answer streams on seamlessly
                continue
            # OpenAI's chunks cannot take back text a client has shown: end with an
            # error (the SDK raises it) rather than splice two answers together.
            yield _data(
                error_body(
                    error_type="server_error",
                    code="provider_stream_broken",
                    message=f"{event['from']}'s stream broke mid-answer ({event['reason']}); the job continues on"
                    f" {event['to']}: its complete answer will be at GET /api/v1/jobs/{job.pk}.",
                )
            )
            return
        elif kind == "usage":
            usage = usage_from_event(event)
            served = {name: event.get(name) for name in ("model", "service_tier", "system_fingerprint")}
        elif kind == "done" and event["status"] == JobStatus.SUCCEEDED:
            reasons = event.get("finish_reasons") or [event["finish_reason"]]
            for index in range(choices):
                finish = (reasons[index] if index < len(reasons) else None) or "stop"
                yield chunk_bytes(job, created, {}, legacy_finish(finish) if legacy else finish, index=index)
            if include_usage:
                if usage is None or usage["cost_usd"] is None:  # served from Postgres
                    stored = await in_thread(load_job, schema, job.pk)
                    usage, served = job_usage(stored), job_served(stored)
                yield _data(
                    {
                        "id": completion_id(job),
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": served.get("model") or job.model,
                        "choices": [],
                        "usage": usage,
                        "service_tier": served.get("service_tier"),
                        "system_fingerprint": served.get("system_fingerprint"),
                    }
                )
            yield b"data: [DONE]\n\n"
        else:  # error, or done with status cancelled
            failure = job_failure(await in_thread(load_job, schema, job.pk))
            yield b"data: " + failure.content + b"\n\n"
