"""Benchmark for the OpenAI surface (issue 19): the CPU that validating one chat
request costs in the web process (JobCreateSerializer, the one validator both
APIs share, to the JobRequest admission takes), for a plain request, one with
tools, one with every parameter, and a ten-message tool conversation. No
database, no network: the validator alone. Prints one JSON object: microseconds
per request, median and spread over the repeats.

    .venv/bin/python -m bench.validation [--iterations 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import django

TOOL: dict[str, Any] = {
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
PLAIN: dict[str, Any] = {"model": "local-small", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 16}
TOOLS: dict[str, Any] = {**PLAIN, "tools": [TOOL, {**TOOL, "function": {**TOOL["function"], "name": "t2"}}]}
FULL: dict[str, Any] = {
    **TOOLS,
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "response_format": {"type": "json_object"},
    "seed": 1,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "top_logprobs": 2,
    "temperature": 0.2,
    "top_p": 0.9,
    "stop": ["\n\n"],
    "user": "u1",
    "metadata": {"trace": "t"},
    "stream_options": None,
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
CONVERSATION: dict[str, Any] = {
    **TOOLS,
    "messages": [
        {"role": "system", "content": "You forecast."},
        *[
            message
            for n in range(3)
            for message in (
                {"role": "user", "content": f"Weather {n}?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
            )
        ],
    ],
}


def takes(body: dict[str, Any]) -> bool:
    """Whether this checkout's validator takes the body (an older one refuses tools)."""
    from apps.jobs.serializers import JobCreateSerializer

    return JobCreateSerializer(data=body).is_valid()


def per_request_us(body: dict[str, Any], iterations: int) -> float:
    from apps.jobs.serializers import JobCreateSerializer

    started = time.perf_counter()
    for _ in range(iterations):
        serializer = JobCreateSerializer(data=body)
        if not serializer.is_valid():
            raise SystemExit(f"the benchmark's body is invalid: {serializer.errors}")
        serializer.job_request()
    return (time.perf_counter() - started) / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiplatform.settings.dev")
    django.setup()
    cells = {"plain": PLAIN, "tools": TOOLS, "every_parameter": FULL, "tool_conversation_10_messages": CONVERSATION}
    results: dict[str, Any] = {name: "refused by this validator" for name, body in cells.items() if not takes(body)}
    cells = {name: body for name, body in cells.items() if name not in results}
    for body in cells.values():
        per_request_us(body, 200)  # warm-up
    for name, body in cells.items():
        runs = [round(per_request_us(body, args.iterations), 1) for _ in range(args.repeats)]
        results[name] = {"median_us": statistics.median(runs), "min_us": min(runs), "max_us": max(runs), "runs": runs}
    print(
        json.dumps(
            {"benchmark": "validation", "iterations": args.iterations, "machine": {"cpus": os.cpu_count()}, **results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
