"""A streamed chat completion from a provider: text and tool calls relayed as
they arrive, usage from the provider or counted, stops (cancel, deadline) that
interrupt a blocked read. Clients, errors and the other calls: providers.py."""

from __future__ import annotations

import _socket
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx2
import openai

from apps.catalog.selectors import ModelSpec

from .capabilities import PROVIDER_EXTRAS, provider_request
from .content import content_tokens
from .providers import (
    CallStopped,
    CallWatch,
    ChatResult,
    ProviderError,
    output_allowance,
    provider_client,
    status_error,
)
from .tokens import count_message_tokens, count_schema_tokens, count_text_tokens


def chat_stream(
    spec: ModelSpec,
    *,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    on_delta: Callable[[str], None],
    watch: CallWatch | None = None,
    on_part: Callable[[dict[str, Any]], None] | None = None,
) -> ChatResult:
    """One streamed chat completion: `on_delta` gets each piece of text as it
    arrives, `on_part` each other piece, typed: a piece of a tool call
    ({"type": "tool_call", index, id?, name?, arguments}: the id and name with a
    call's first piece, then fragments of its arguments), of a refusal
    ({"type": "refusal", text}) or of the logprobs ({"type": "logprobs", content}),
    assembled into the result's `tool_calls`, `refusal` and `logprobs`. Usage comes from the
    provider's final usage chunk when it sends one (`stream_options.include_usage`);
    servers that never do (llama.cpp) get their usage counted with tiktoken and
    marked estimated. A stream that breaks before its finish reason is a failure,
    never a silently truncated answer.

    The output allowance is always sent (output_allowance; as
    `max_completion_tokens` to OpenAI, else `max_tokens`): what the budget held. A
    `watch` that says stop (cancel, deadline) ends the call: CallStopped with
    the text so far."""
    if watch is not None and watch.reason():
        raise CallStopped(watch.reason() or "", sent=False)
    messages, params = provider_request(spec, messages, params)  # in the provider's dialect
    params_max_tokens = params.get("max_tokens")
    params = {key: value for key, value in params.items() if key != "max_tokens"}
    # OpenAI's own API names it max_completion_tokens (its reasoning models refuse
    # max_tokens); the servers that speak its protocol know max_tokens.
    allowance_field = "max_completion_tokens" if spec.provider == "openai" else "max_tokens"
    params[allowance_field] = output_allowance(spec, params_max_tokens)
    pieces: list[str] = []  # the text and the tool calls' arguments so far: what a stop is charged for
    try:
        return _chat_stream(
            spec,
            messages=messages,
            params=params,
            on_delta=on_delta,
            on_part=on_part,
            watch=watch,
            pieces=pieces,
        )
    except CallStopped:
        raise
    except Exception as exc:
        # Closing the response from the watcher breaks the read in whatever way the
        # transport breaks: the watch knows why.
        if watch is not None and watch.reason():
            raise CallStopped(watch.reason() or "", partial_output="".join(pieces), sent=True) from exc
        raise
    finally:
        if watch is not None:
            watch.attach(None)


def _chat_stream(
    spec: ModelSpec,
    *,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    on_delta: Callable[[str], None],
    on_part: Callable[[dict[str, Any]], None] | None,
    watch: CallWatch | None,
    pieces: list[str],
) -> ChatResult:
    client = provider_client(spec)
    # Provider extras are no SDK arguments: they go at the body's top level.
    sdk_params = {key: value for key, value in params.items() if key not in PROVIDER_EXTRAS}
    extras = {key: value for key, value in params.items() if key in PROVIDER_EXTRAS}
    thinking: list[str] = []  # reasoning_content (vLLM, DeepSeek) or reasoning (OpenRouter)
    choices: dict[int, _Choice] = {}  # by index: n > 1 answers several
    started = time.perf_counter()
    usage: dict[str, Any] | None = None
    response_model = spec.provider_model_name
    response_id = ""
    service_tier = fingerprint = ""
    first_chunk: float | None = None
    try:
        # The SDK makes the request (auth, base URL, status errors); its streaming
        # response is read as raw SSE lines: building a pydantic object per chunk
        # cost more than half of a worker's CPU per streamed job.
        with client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
            model=spec.provider_model_name,
            messages=list(messages),
            stream=True,
            stream_options={"include_usage": True},
            **sdk_params,
            extra_body=extras or None,
        ) as response:
            if watch is not None:
                watch.attach(_interrupter(response))
            for line in response.iter_lines():
                if watch is not None and watch.reason():
                    raise CallStopped(watch.reason() or "", partial_output="".join(pieces), sent=True)
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    error = chunk["error"]
                    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
                    raise ProviderError("provider_error", message)
                response_id = chunk.get("id") or response_id
                response_model = chunk.get("model") or response_model
                service_tier = chunk.get("service_tier") or service_tier
                fingerprint = chunk.get("system_fingerprint") or fingerprint
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    index = int(choice.get("index") or 0)
                    if index not in choices and len(choices) >= max(1, int(params.get("n") or 1)):
                        raise ProviderError("provider_bad_response", f"{spec.slug} sent more choices than asked for.")
                    state = choices.setdefault(index, _Choice(index))
                    delta = choice.get("delta") or {}
                    thought = delta.get("reasoning_content") or delta.get("reasoning")
                    if index == 0 and isinstance(thought, str) and thought:
                        thinking.append(thought)
                    if first_chunk is None and (delta.get("content") or delta.get("tool_calls")):
                        first_chunk = time.perf_counter()
                    for part in state.take(delta, choice.get("logprobs")):
                        pieces.append(part.get("text") or part.get("arguments") or "")
                        if index == 0 and part["type"] == "delta":
                            on_delta(part["text"])
                        elif on_part is not None:
                            on_part(part)
                    if choice.get("finish_reason"):
                        state.finish_reason = str(choice["finish_reason"])
    except openai.APITimeoutError as exc:
        raise ProviderError("provider_timeout", f"No answer from {spec.slug} within the timeout.") from exc
    except (openai.APIConnectionError, httpx2.TransportError) as exc:
        if pieces:
            raise ProviderError(
                "provider_stream_broken",
                f"The stream from {spec.slug} broke after {len(pieces)} chunks: {exc}",
                partial_output="".join(pieces),
            ) from exc
        raise ProviderError("provider_unreachable", f"Cannot connect to {spec.base_url}: {exc}") from exc
    except openai.APIStatusError as exc:
        raise status_error(spec, exc) from exc
    except openai.OpenAIError as exc:
        raise ProviderError("provider_error", str(exc)) from exc
    except ValueError as exc:  # a data line that is not JSON
        raise ProviderError("provider_bad_response", f"{spec.slug} sent an unreadable stream chunk: {exc}") from exc
    if watch is not None and watch.reason():
        raise CallStopped(watch.reason() or "", partial_output="".join(pieces), sent=True)
    first = choices.get(0)
    if first is None or any(state.finish_reason is None for state in choices.values()):
        raise ProviderError(
            "provider_stream_broken",
            f"The stream from {spec.slug} ended without a finish reason (truncated answer).",
            partial_output="".join(pieces),
        )
    if usage is not None and usage.get("prompt_tokens") is not None and usage.get("completion_tokens") is not None:
        input_tokens, output_tokens, estimated = int(usage["prompt_tokens"]), int(usage["completion_tokens"]), False
    else:
        input_tokens = (
            count_message_tokens(messages, spec.encoding)
            + count_schema_tokens(params, spec.encoding)
            + content_tokens(spec=spec, messages=messages)
        )
        output_tokens, estimated = count_text_tokens("".join(pieces), spec.encoding), True
    details_in = (usage or {}).get("prompt_tokens_details") or {}
    details_out = (usage or {}).get("completion_tokens_details") or {}
    return ChatResult(
        output="".join(first.text),
        finish_reason=first.finish_reason or "",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_estimated=estimated,
        latency_ms=int((time.perf_counter() - started) * 1000),
        response_model=response_model,
        response_id=response_id,
        first_chunk_s=first_chunk - started if first_chunk is not None else None,
        tool_calls=first.tool_calls(),
        reasoning="".join(thinking),
        refusal="".join(first.refusal),
        logprobs=first.logprobs or None,
        choices=[choices[index].whole() for index in sorted(choices) if index] or None,
        cached_tokens=0 if estimated else int(details_in.get("cached_tokens") or 0),
        reasoning_tokens=0 if estimated else int(details_out.get("reasoning_tokens") or 0),
        service_tier=str(service_tier)[:32],
        system_fingerprint=str(fingerprint)[:200],
    )


class _Choice:
    """One choice of a streamed answer (n > 1 streams several, by index): its
    pieces as they arrive, and the whole of it at the end."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def take(self, delta: Mapping[str, Any], logprobs: Any) -> list[dict[str, Any]]:
        """A chunk's delta (and logprobs) for this choice, as the relay's typed
        pieces: `delta` (text), `tool_call`, `refusal`, `logprobs`; those of a choice
        after the first carry its index as `choice`."""
        parts: list[dict[str, Any]] = []
        piece = delta.get("content")
        if isinstance(piece, str) and piece:
            self.text.append(piece)
            parts.append({"type": "delta", "text": piece})
        for call in delta.get("tool_calls") or ():
            parts.append(self._call_piece(call))
        said_no = delta.get("refusal")
        if isinstance(said_no, str) and said_no:
            self.refusal.append(said_no)
            parts.append({"type": "refusal", "text": said_no})
        entries = (logprobs or {}).get("content") if isinstance(logprobs, Mapping) else None
        if isinstance(entries, list) and entries:
            self.logprobs.extend(entries)
            parts.append({"type": "logprobs", "content": entries})
        if self.index:
            for part in parts:
                part["choice"] = self.index
        return parts

    def _call_piece(self, call: Mapping[str, Any]) -> dict[str, Any]:
        """Add one streamed piece of a tool call to the calls assembled so far, and
        return it as the relay shows it: {index, id?, name?, arguments}."""
        index = int(call.get("index") or 0)
        function = call.get("function") or {}
        assembled = self.calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        fragment: dict[str, Any] = {"type": "tool_call", "index": index}
        if call.get("id"):
            assembled["id"] = fragment["id"] = str(call["id"])
        if function.get("name"):
            assembled["function"]["name"] += str(function["name"])
            fragment["name"] = str(function["name"])
        arguments = str(function.get("arguments") or "")
        assembled["function"]["arguments"] += arguments
        fragment["arguments"] = arguments
        return fragment

    def tool_calls(self) -> list[dict[str, Any]] | None:
        return [self.calls[index] for index in sorted(self.calls)] or None

    def whole(self) -> dict[str, Any]:
        """A choice after the first as a job keeps it (Job.choices)."""
        return {
            "index": self.index,
            "output": "".join(self.text),
            "tool_calls": self.tool_calls(),
            "refusal": "".join(self.refusal),
            "logprobs": self.logprobs or None,
            "finish_reason": self.finish_reason or "",
        }


def _interrupter(response: Any) -> Callable[[], None]:
    """What stops a read blocked on this response from another thread or greenlet:
    shutting its socket down (the reader then sees the connection end). Closing the
    response from there would not wake a thread blocked in recv(), and would pull
    the connection from under the reader."""
    sock = None
    with contextlib.suppress(Exception):
        stream = response.http_response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None

    def interrupt() -> None:
        if sock is None:
            return
        raw = getattr(sock, "_sock", sock)  # gevent wraps the OS socket
        # The plain socket's shutdown, not TLS's (which would tear its state down
        # while the reader still uses it).
        with contextlib.suppress(OSError, TypeError, ValueError):
            _socket.socket.shutdown(raw, _socket.SHUT_RDWR)

    return interrupt
