"""Benchmark for the local embedder's answer quality (issue 10). Prints one JSON object.

On the labelled pairs in tests/data/semantic_pairs.jsonl (paraphrases that may
share an answer; near-misses that must not: another city, language, number,
entity, or the negation), the built-in CPU embedder (all-MiniLM-L6-v2, int8
ONNX) with the lookup's guard:

- at its default threshold: the false-hit rate (at most 2% is the bar), per
  kind, and the hit rate on true paraphrases;
- the whole curve, with and without the guard;
- embedding speed: one prompt at a time, median and p99, on one thread.

    .venv/bin/python -m bench.semantic_quality
"""

from __future__ import annotations

import json
import os
import statistics
import time


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiplatform.settings.dev")
    import django

    django.setup()
    from apps.cache.local_embedder import DEFAULT_THRESHOLD, MODEL_NAME, LocalEmbedder
    from apps.cache.quality import load_pairs, rates, score

    embedder = LocalEmbedder()
    started = time.perf_counter()
    embedder.embed(["load the model"])
    load_s = time.perf_counter() - started
    pairs = load_pairs()
    scored = score(pairs, embedder)
    curve = [round(0.80 + i / 100, 2) for i in range(18)]
    timings = []
    prompts = [p.a for p in pairs]
    for prompt in prompts:
        t0 = time.perf_counter()
        embedder.embed([prompt])
        timings.append((time.perf_counter() - t0) * 1000)
    timings.sort()
    out = {
        "embedder": MODEL_NAME,
        "pairs": len(pairs),
        "default": rates(scored, DEFAULT_THRESHOLD),
        "default_without_guard": rates(scored, DEFAULT_THRESHOLD, guard=False),
        "curve": {
            f"{t:.2f}": {
                "hit_rate": rates(scored, t)["hit_rate"],
                "false_hit_rate": rates(scored, t)["false_hit_rate"],
                "false_hit_rate_without_guard": rates(scored, t, guard=False)["false_hit_rate"],
            }
            for t in curve
        },
        "guard_refuses": {
            "near_misses": round(
                sum(not s.compatible for s in scored if not s.pair.same)
                / (len(scored) - sum(s.pair.same for s in scored)),
                4,
            ),
            "paraphrases": round(
                sum(not s.compatible for s in scored if s.pair.same) / sum(s.pair.same for s in scored), 4
            ),
        },
        "load_s": round(load_s, 3),
        "embed_one_ms": {
            "p50": round(statistics.median(timings), 3),
            "p99": round(timings[int(len(timings) * 0.99)], 3),
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
