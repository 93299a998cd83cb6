"""Benchmark for the bundled local model (issue 10). Prints one JSON object.

SmolLM2-135M-Instruct on llama.cpp's server (as `make run` starts it), streamed
one request at a time (the server generates for one request at a time), with
`max_tokens` 64 and the cache bypassed, in pairs whose order alternates:

- direct: `POST /v1/chat/completions` to the llama.cpp server;
- platform: the same request through the platform's `/v1/chat/completions`
  (web -> Celery queue -> gevent worker -> llama.cpp -> Redis stream -> web).

Prompts are ones the model does not finish within 64 tokens, so both calls of a
pair generate the same amount (a pair where either answer stopped early is left
out, and counted). Each call's prompt is new (a number in front): llama.cpp
reuses the previous prompt's evaluation for a shared prefix, which would favour
whichever call comes second.

Reported per path: time to first content chunk and total time (p50/p90), and
generation speed (characters of content per second after the first chunk; the
platform coalesces deltas, so its chunks are fewer and larger); and per pair,
what the platform adds.

    .venv/bin/python -m bench.local_model [--requests 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import httpx

from bench.harness import percentile, platform
from devtools import local_model

PROMPTS = [
    "Count from 1 to 500, separated by commas.",
    "Write a very long story about a lighthouse keeper and his dog.",
    "List as many animals as you can, one per line.",
    "Explain in great detail how a car engine works.",
]
MAX_TOKENS = 64


def request_body(n: int) -> dict[str, Any]:
    return {
        "model": "local-small",
        "messages": [{"role": "user", "content": f"({n}) {PROMPTS[n // 2 % len(PROMPTS)]}"}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.7,
        "stream": True,
    }


def stream(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    first = None
    chunks, chars, finish = 0, 0, ""
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            content = (choices[0].get("delta") or {}).get("content")
            if content:
                chunks += 1
                chars += len(content)
                if first is None:
                    first = time.perf_counter()
            finish = choices[0].get("finish_reason") or finish
    total = time.perf_counter() - started
    assert first is not None, "no content arrived"
    return {
        "ttfc": first - started,
        "total": total,
        "chunks": chunks,
        "chars": chars,
        "gen_s": total - (first - started),
        "full": finish == "length",
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    ttfc = [r["ttfc"] for r in rows]
    total = [r["total"] for r in rows]
    speed = [r["chars"] / r["gen_s"] for r in rows if r["gen_s"] > 0]
    return {
        "requests": len(rows),
        "ttfc_p50_ms": round(percentile(ttfc, 0.5) * 1000, 1),
        "ttfc_p90_ms": round(percentile(ttfc, 0.9) * 1000, 1),
        "total_p50_ms": round(percentile(total, 0.5) * 1000, 1),
        "total_p90_ms": round(percentile(total, 0.9) * 1000, 1),
        "chars_per_s_p50": round(statistics.median(speed), 1) if speed else 0.0,
        "chunks_p50": statistics.median(r["chunks"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    direct: list[dict[str, Any]] = []
    through: list[dict[str, Any]] = []
    short = 0
    with local_model.running() as model_url, platform() as plat:
        plat.manage(
            "shell",
            "-c",
            "from apps.catalog.models import LLMModel; "
            f"LLMModel.objects.filter(slug='local-small').update(base_url='{model_url}', provider='llama.cpp')",
        )
        time.sleep(3)  # the worker's catalog cache
        key = {"Authorization": f"Bearer {plat.api_key}"}
        direct_url = f"{model_url}/chat/completions"
        platform_url = f"http://127.0.0.1:{plat.web_port}/v1/chat/completions"
        with httpx.Client(timeout=120, trust_env=False) as client:
            for i in range(args.requests + 2):
                direct_body, platform_body = request_body(2 * i), request_body(2 * i + 1)
                platform_body["cache"] = {"mode": "bypass"}
                if i % 2:
                    two = stream(client, platform_url, platform_body, key)
                    one = stream(client, direct_url, direct_body, {})
                else:
                    one = stream(client, direct_url, direct_body, {})
                    two = stream(client, platform_url, platform_body, key)
                if i < 2:  # the first two pairs warm both paths
                    continue
                if one["full"] and two["full"]:
                    direct.append(one)
                    through.append(two)
                else:
                    short += 1
    d, p = summary(direct), summary(through)
    pairs = [(b["total"] - a["total"]) * 1000 for a, b in zip(direct, through, strict=True)]
    out = {
        "model": "SmolLM2-135M-Instruct Q4_1 (llama.cpp, 2 threads)",
        "max_tokens": MAX_TOKENS,
        "pairs_left_out_stopped_early": short,
        "direct": d,
        "platform": p,
        "platform_adds_ms": {
            "ttfc_p50": round(p["ttfc_p50_ms"] - d["ttfc_p50_ms"], 1),
            "total_p50": round(p["total_p50_ms"] - d["total_p50_ms"], 1),
            "total_per_pair_median": round(statistics.median(pairs), 1) if pairs else None,
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
