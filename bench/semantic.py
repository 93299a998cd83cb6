"""Benchmark for the semantic cache (issue 6). Prints one JSON object.

For 10,000 and 100,000 entries of 384 dimensions in one tenant (one model, one
partition: the whole table is the candidate set), through the platform's own
lookup (`apps.cache.semantic.nearest`: a transaction, SET LOCAL ef_search and
iterative scan, the partial HNSW index):

- p50/p99 lookup latency (the SQL round trip; the embedding call is not timed);
- recall@1 against an exact scan (the same query with index scans disabled), for
  queries near an entry (an entry's vector plus noise, as a paraphrase is) and for
  fresh queries from the same distribution.

Two distributions of entries. "embedding_like": sentence embeddings occupy a
low-dimensional, clustered part of their space (their intrinsic dimension is
tens, not hundreds), modelled as 384-d images of 32-d latent points drawn around
200 topics, plus a little isotropic noise. "uniform_random": unit vectors drawn
uniformly, the worst case for any graph index (every point is nearly equidistant
from every other); no embedding model produces them.

    .venv/bin/python -m bench.semantic [--sizes 10000,100000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from bench.harness import platform

SCRIPT = """
import json, math, random, time
from django.db import connection, transaction
from django_tenants.utils import tenant_context
from apps.tenants.models import Tenant
from apps.cache.semantic import SemanticKey, nearest, _literal

SIZE, QUERIES, DIM, LATENT, TOPICS = {size}, {queries}, 384, 32, 200
DISTRIBUTION = "{distribution}"
rng = random.Random(SIZE)

def unit(v):
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]

basis = [[rng.gauss(0, 1) for _ in range(LATENT)] for _ in range(DIM)]
topics = [[rng.gauss(0, 1) for _ in range(LATENT)] for _ in range(TOPICS)]

def rand():
    if DISTRIBUTION == "uniform_random":
        return unit([rng.gauss(0, 1) for _ in range(DIM)])
    topic = topics[rng.randrange(TOPICS)]
    z = [t + rng.gauss(0, 0.6) for t in topic]
    return unit([sum(b * x for b, x in zip(row, z)) + rng.gauss(0, 0.3) for row in basis])

key = SemanticKey("bench-model", "p" * 64, "")
out = {{"entries": SIZE, "dimensions": DIM, "distribution": DISTRIBUTION}}
with tenant_context(Tenant.objects.get(schema_name="demo")):
    with connection.cursor() as cur:
        cur.execute("TRUNCATE answer_cache_semanticentry")
        cur.execute("DROP INDEX IF EXISTS cache_semantic_hnsw_384")
        vectors = []
        started = time.perf_counter()
        with cur.cursor.copy(
            "COPY answer_cache_semanticentry (model, partition, prompt, dimensions, embedding, output, finish_reason,"
            " input_tokens, output_tokens, usage_estimated, response_model, created_at, expires_at, last_hit_at,"
            " hit_count) FROM STDIN"
        ) as copy:
            for i in range(SIZE):
                v = rand()
                vectors.append(v)
                copy.write_row(("bench-model", "p" * 64, f"prompt {{i}}", DIM, _literal(v), "answer", "stop", 10, 10,
                                False, "", "2026-01-01", "2099-01-01", "2026-01-01", 0))
        out["load_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        cur.execute("SET maintenance_work_mem = '1GB'")
        cur.execute(
            "CREATE INDEX cache_semantic_hnsw_384 ON answer_cache_semanticentry USING hnsw"
            " ((embedding::vector(384)) vector_cosine_ops) WITH (m = 16, ef_construction = 64) WHERE dimensions = 384"
        )
        cur.execute("ANALYZE answer_cache_semanticentry")
        out["index_build_s"] = round(time.perf_counter() - started, 1)
        ids = [row[0] for row in cur.execute("SELECT id FROM answer_cache_semanticentry ORDER BY id").fetchall()]

    def exact(q):
        lit = _literal(q)
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute("SET LOCAL enable_indexscan = off")
            cur.execute(
                "SELECT id FROM answer_cache_semanticentry WHERE dimensions = 384 AND model = %s AND partition = %s"
                " ORDER BY (embedding::vector(384)) <=> %s::vector(384) LIMIT 1",
                [key.model, key.partition, lit],
            )
            return cur.fetchone()[0]

    def measure(queries):
        latencies, agree = [], 0
        for q in queries:
            t0 = time.perf_counter()
            found = nearest(key=key, vector=q)
            latencies.append(time.perf_counter() - t0)
            agree += found is not None and found[0] == exact(q)
        latencies.sort()
        pct = lambda p: round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000, 3)
        recall = round(agree / len(queries), 4)
        return {{"queries": len(queries), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "recall_at_1": recall}}

    for q in [rand() for _ in range(20)]:
        nearest(key=key, vector=q)  # warm the index pages
    near = []
    for _ in range(QUERIES):
        base = vectors[rng.randrange(SIZE)]
        near.append(unit([x + rng.gauss(0, 0.01) for x in base]))  # cosine ~0.98 to its entry
    out["near_queries"] = measure(near)
    out["fresh_queries"] = measure([rand() for _ in range(QUERIES)])
    with connection.cursor() as cur:
        cur.execute("TRUNCATE answer_cache_semanticentry")
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--distributions", default="embedding_like,uniform_random")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with platform() as plat:
        for distribution in args.distributions.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                script = SCRIPT.format(size=size, queries=args.queries, distribution=distribution)
                output = plat.manage("shell", "-c", script)
                results.append(json.loads(output.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "semantic_cache", "machine": {"cpus": os.cpu_count()}, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
