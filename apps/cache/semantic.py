"""The semantic cache: answers reused for paraphrases, in the tenant's schema.

An entry is keyed by its model and partition (a hash of the conversation before
the last user message, the system prompt included, the sampling parameters, the
embedder, the last user message's parts other than text, and the user when the
tenant's cache is per user: a paraphrase matches only in the same context, the
same words about another image never match, and vectors of two embedders are
never compared) and holds the embedding of the normalized last user message's
text. A lookup embeds the new message and asks the partition's nearest
neighbours through the HNSW index for its vector size, with `hnsw.ef_search`
raised and pgvector 0.8's iterative scan on (the partition is a filter HNSW
applies after the scan), both `SET LOCAL` in the lookup's transaction so pooled
connections do not keep them. The closest neighbour at or above the tenant's
threshold that also agrees with the new prompt on numbers, negation, opposites
and languages (guard.py) is a hit. Entries expire (TTL) and are capped per
tenant (`semantic_evict`, least recently hit first).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from apps.llm.tokens import message_text

from .embedder import Embedder, EmbedderError, PromptTooLong
from .exact import CachedAnswer
from .guard import compatible
from .models import DIMENSIONS, SemanticEntry
from .policy import Policy

logger = logging.getLogger(__name__)


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class SemanticKey:
    """Where a request's answer lives in the semantic cache."""

    model: str
    partition: str
    prompt: str  # the last user message, normalized


def semantic_key(
    *, model: str, messages: list[dict[str, Any]], params: dict[str, Any], embedder: str, owner: str = ""
) -> SemanticKey | None:
    """None when the request has no user message to match on. The partition
    names the embedder too (vectors of two embedders are not comparable), the
    last message's non-text parts (an image, audio: only the text is embedded, so
    another image must be another partition) and the owner (Policy.owner)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        return None
    content = messages[last].get("content")
    prompt = normalize(message_text(content))
    if not prompt:
        return None
    media = [part for part in content if part.get("type") != "text"] if isinstance(content, list) else []
    context: dict[str, Any] = {
        "before": messages[:last],
        "after": messages[last + 1 :],
        "params": params,
        "embedder": embedder,
    }
    # Only when present: partitions of text-only, shared entries stay what they were.
    if media:
        context["media"] = media
    if owner:
        context["owner"] = owner
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return SemanticKey(model, hashlib.sha256(canonical.encode()).hexdigest(), prompt)


def _literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(map(str, vector)) + "]"


@dataclass(frozen=True)
class SemanticHit:
    entry_id: int
    similarity: float
    answer: CachedAnswer


@dataclass(frozen=True)
class SemanticLookup:
    key: SemanticKey
    vector: list[float]  # the prompt's embedding (reused when the answer is written)
    hit: SemanticHit | None
    similarity: float | None  # the nearest neighbour's, hit or not
    elapsed_ms: float


# Neighbours a lookup considers: the nearest one that the guard refuses does not
# hide a slightly farther one that agrees on the details.
CANDIDATES = 5


def nearest(*, key: SemanticKey, vector: Sequence[float]) -> tuple[int, float] | None:
    """The partition's nearest live entry and its cosine similarity (index scan)."""
    found = neighbours(key=key, vector=vector, limit=1)
    return (found[0][0], found[0][1]) if found else None


def neighbours(*, key: SemanticKey, vector: Sequence[float], limit: int) -> list[tuple[int, float, str]]:
    """The partition's nearest live entries, closest first: id, cosine similarity
    and the prompt stored with it (index scan)."""
    dims = len(vector)
    if dims not in DIMENSIONS:
        raise EmbedderError(f"vectors of size {dims} cannot be indexed (sizes: {DIMENSIONS})")
    literal = _literal(vector)
    # `dims` is one of DIMENSIONS (an int we checked), written into the SQL so the
    # planner can match the partial index on it.
    sql = (
        f"SELECT id, 1 - ((embedding::vector({dims})) <=> %s::vector({dims})), prompt"
        f" FROM answer_cache_semanticentry"
        f" WHERE dimensions = {dims} AND model = %s AND partition = %s AND expires_at > now()"
        f" ORDER BY (embedding::vector({dims})) <=> %s::vector({dims}) LIMIT %s"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # Both settings in one round trip; `true`: local to this transaction.
        cursor.execute(
            "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)",
            [str(settings.SEMANTIC_EF_SEARCH)],
        )
        cursor.execute(sql, [literal, key.model, key.partition, literal, limit])
        rows = cursor.fetchall()
    return [(int(row[0]), float(row[1]), str(row[2])) for row in rows]


def semantic_lookup(
    *,
    policy: Policy,
    embedder: Embedder,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    user_id: int,
) -> SemanticLookup | None:
    """Embed the request's last user message and look for a paraphrase's answer
    (in the current tenant schema; the user's own entries when the policy is per
    user). None when the request cannot be matched (no user message, or one
    longer than the embedder reads). Raises EmbedderError when the embedder fails."""
    key = semantic_key(
        model=model, messages=messages, params=params, embedder=embedder.name, owner=policy.owner(user_id)
    )
    if key is None:
        return None
    started = time.perf_counter()
    try:
        vector = embedder.embed([key.prompt])[0]
    except PromptTooLong:
        return None
    found = neighbours(key=key, vector=vector, limit=CANDIDATES)
    hit = None
    # The closest entry at or above the threshold that agrees on the details an
    # embedding glosses over (numbers, negation, opposites, languages).
    close = [c for c in found if c[1] >= policy.semantic_threshold]
    match = next((c for c in close if compatible(c[2], key.prompt)), None)
    if match is None and close:
        logger.info(
            "semantic cache: %d entries at or above the threshold differ in a detail (closest %.4f)",
            len(close),
            close[0][1],
        )
    if match is not None:
        entry_id, similarity, _ = match
        now = timezone.now()
        SemanticEntry.objects.filter(pk=entry_id).update(hit_count=F("hit_count") + 1, last_hit_at=now)
        entry = SemanticEntry.objects.filter(pk=entry_id).first()
        if entry is not None:
            hit = SemanticHit(entry_id, similarity, _answer(entry))
    elapsed = (time.perf_counter() - started) * 1000
    return SemanticLookup(key, vector, hit, found[0][1] if found else None, elapsed)


def _answer(entry: SemanticEntry) -> CachedAnswer:
    return CachedAnswer(
        output=entry.output,
        finish_reason=entry.finish_reason,
        input_tokens=entry.input_tokens,
        output_tokens=entry.output_tokens,
        usage_estimated=entry.usage_estimated,
        response_model=entry.response_model,
        created=entry.created_at.isoformat(),
    )


def semantic_store(*, policy: Policy, key: SemanticKey, vector: Sequence[float], answer: CachedAnswer) -> None:
    now = timezone.now()
    SemanticEntry.objects.create(
        model=key.model,
        partition=key.partition,
        prompt=key.prompt,
        dimensions=len(vector),
        embedding=list(vector),
        output=answer.output,
        finish_reason=answer.finish_reason,
        input_tokens=answer.input_tokens,
        output_tokens=answer.output_tokens,
        usage_estimated=answer.usage_estimated,
        response_model=answer.response_model,
        created_at=now,
        expires_at=now + timedelta(seconds=policy.semantic_ttl_seconds),
        last_hit_at=now,
    )


def semantic_evict(*, policy: Policy) -> int:
    """Drop expired entries, then the least recently hit beyond the tenant's
    maximum (in the current tenant schema). How many went."""
    expired, _ = SemanticEntry.objects.filter(expires_at__lte=timezone.now()).delete()
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM answer_cache_semanticentry WHERE id IN"
            " (SELECT id FROM answer_cache_semanticentry ORDER BY last_hit_at DESC, id DESC OFFSET %s)",
            [policy.semantic_max_entries],
        )
        over = cursor.rowcount
    return expired + max(0, over)
