"""One client process of bench/ratelimit.py: token-bucket decisions (the
platform's own script, three buckets: user, tenant, model) against the
platform's Redis. Prints one JSON line.

    sequential N          one decision at a time: latency per decision
    threads T N           T threads of one process, N decisions in all
    pipelined S DEPTH T0  from wall-clock T0 for S seconds, DEPTH decisions per
                          round trip (each its own atomic script call, as many
                          web processes' decisions arrive together)
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiplatform.settings.dev")
django.setup()

from apps.ratelimit.buckets import _TAKE, Bucket, _script, buckets_take, limiter_redis  # noqa: E402

# Huge buckets: every decision is admitted (and so writes all three buckets, the
# most expensive path), as on a platform under its limits.
BUCKETS = [
    Bucket("aip:{demo}:rl:bench:user", 1e12, 1e9),
    Bucket("aip:{demo}:rl:bench:tenant", 1e12, 1e9),
    Bucket("aip:rl:bench:model", 1e12, 1e9),
]
COSTS = [1000.0, 1000.0, 1000.0]


def decide() -> float:
    started = time.perf_counter()
    if not buckets_take(BUCKETS, COSTS).admitted:
        raise RuntimeError("refused")
    return time.perf_counter() - started


def main() -> None:
    mode = sys.argv[1]
    for _ in range(300):
        decide()  # warm: connection, script cached on the server
    if mode == "sequential":
        count = int(sys.argv[2])
        started = time.perf_counter()
        latencies = [decide() for _ in range(count)]
        print(json.dumps({"elapsed": time.perf_counter() - started, "latencies": latencies}))
    elif mode == "threads":
        threads, count = int(sys.argv[2]), int(sys.argv[3])
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            latencies = list(pool.map(lambda _: decide(), range(count)))
        print(json.dumps({"elapsed": time.perf_counter() - started, "latencies": latencies}))
    elif mode == "pipelined":
        seconds, depth, start_at = float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        script = _script(_TAKE)
        keys = [b.key for b in BUCKETS]
        args = [v for b, c in zip(BUCKETS, COSTS, strict=True) for v in (b.capacity, b.per_second, c)]
        pipe = limiter_redis().pipeline(transaction=False)
        time.sleep(max(0.0, start_at - time.time()))
        deadline = start_at + seconds
        decisions = 0
        while time.time() < deadline:
            for _ in range(depth):
                script(keys=keys, args=args, client=pipe)
            results = pipe.execute()
            if any(int(r[0]) != 1 for r in results):
                raise RuntimeError("refused")
            decisions += depth
        print(json.dumps({"decisions": decisions}))


if __name__ == "__main__":
    main()
