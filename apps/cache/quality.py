"""How well an embedder (with the guard) tells paraphrases from near-misses, on
a labelled set of prompt pairs (tests/data/semantic_pairs.jsonl): the share of
true paraphrases it would answer from cache (hit rate) and the share of
near-misses it would wrongly answer (false-hit rate), per threshold.

Prompts are normalized and compared exactly as a cache lookup does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .embedder import Embedder
from .guard import compatible
from .semantic import normalize

PAIRS_FILE = Path(__file__).resolve().parents[2] / "tests" / "data" / "semantic_pairs.jsonl"


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool
    kind: str


@dataclass(frozen=True)
class Scored:
    pair: Pair
    similarity: float
    compatible: bool


def load_pairs(path: Path = PAIRS_FILE) -> list[Pair]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            pairs.append(Pair(row["a"], row["b"], bool(row["same"]), row["kind"]))
    return pairs


def score(pairs: Sequence[Pair], embedder: Embedder, batch: int = 64) -> list[Scored]:
    texts = sorted({normalize(t) for p in pairs for t in (p.a, p.b)})
    vectors: dict[str, list[float]] = {}
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        vectors.update(zip(chunk, embedder.embed(chunk), strict=True))
    scored = []
    for p in pairs:
        a, b = normalize(p.a), normalize(p.b)
        # Cosine similarity; both backends return unit vectors, but do not rely on it.
        va, vb = vectors[a], vectors[b]
        dot = sum(x * y for x, y in zip(va, vb, strict=True))
        norm = (sum(x * x for x in va) * sum(y * y for y in vb)) ** 0.5
        scored.append(Scored(p, dot / norm if norm else 0.0, compatible(a, b)))
    return scored


def rates(scored: Sequence[Scored], threshold: float, *, guard: bool = True) -> dict[str, Any]:
    """Hit rate on paraphrases, false-hit rate on near-misses (and per kind)."""

    def hit(s: Scored) -> bool:
        return s.similarity >= threshold and (s.compatible or not guard)

    same = [s for s in scored if s.pair.same]
    other = [s for s in scored if not s.pair.same]
    kinds = sorted({s.pair.kind for s in other})
    return {
        "threshold": threshold,
        "paraphrases": len(same),
        "near_misses": len(other),
        "hit_rate": round(sum(map(hit, same)) / len(same), 4) if same else None,
        "false_hit_rate": round(sum(map(hit, other)) / len(other), 4) if other else None,
        "false_hits": sum(map(hit, other)),
        "false_hit_rate_by_kind": {
            kind: round(sum(hit(s) for s in other if s.pair.kind == kind) / sum(s.pair.kind == kind for s in other), 4)
            for kind in kinds
        },
    }
