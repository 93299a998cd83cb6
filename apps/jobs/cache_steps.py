"""The worker's cache steps around a call: the look before it (the exact entry,
then the semantic cache), the semantic cache as the chain's last resort, and
the write of a model's answer for paraphrases. Cache trouble is logged, never
fatal to a job."""

from __future__ import annotations

import logging

from django.db import DatabaseError

from apps.cache.embedder import EmbedderError, PromptTooLong
from apps.cache.exact import CachedAnswer, exact_get
from apps.cache.policy import CachePlan, Policy, policy_for
from apps.cache.semantic import SemanticLookup, semantic_key, semantic_lookup, semantic_store
from apps.cache.stats import cache_count
from apps.observability import metrics
from apps.tenants.db import current_schema

from .models import Job

logger = logging.getLogger(__name__)


def cache_lookup(*, job: Job, plan: CachePlan) -> tuple[CachedAnswer | None, str, float | None, SemanticLookup | None]:
    """The worker's look before calling the model: the exact entry (written while
    the job waited), then the semantic cache. (answer, kind, similarity, the
    semantic lookup to reuse its embedding). Cache trouble is logged, never fatal."""
    schema = current_schema()
    if plan.key:
        answer = exact_get(schema=schema, key=plan.key, count=False)  # its miss was counted at submission
        if answer is not None:
            cache_count(schema=schema, field="exact_hit")
            metrics.record_cache_request("exact", hit=True)
            return answer, "exact", None, None
    if not plan.semantic:
        return None, "", None, None
    lookup = semantic_lookup_for(job, policy_for(schema), when="before the call (the model is called)")
    if lookup is None:
        return None, "", None, None
    cache_count(schema=schema, field="semantic_hit" if lookup.hit else "semantic_miss", lookup_ms=lookup.elapsed_ms)
    metrics.record_cache_request("semantic", hit=lookup.hit is not None)
    logger.info(
        "semantic cache %s for job %s (similarity %s, %.1f ms)",
        "hit" if lookup.hit else "miss",
        job.pk,
        None if lookup.similarity is None else round(lookup.similarity, 4),
        lookup.elapsed_ms,
    )
    if lookup.hit is not None:
        return lookup.hit.answer, "semantic", lookup.hit.similarity, lookup
    return None, "", None, lookup


def semantic_lookup_for(job: Job, policy: Policy, *, when: str) -> SemanticLookup | None:
    """The tenant's semantic cache asked for this job's request; None when there
    is no embedder, the prompt has no key, or the lookup failed (logged: cache
    trouble never fails a job)."""
    if policy.embedder is None:
        return None
    try:
        return semantic_lookup(
            policy=policy,
            embedder=policy.embedder,
            model=job.model,
            messages=job.messages,
            params=job.params,
            user_id=job.user_id,
        )
    except (EmbedderError, DatabaseError) as exc:
        logger.warning("semantic cache lookup %s failed for job %s: %s", when, job.pk, exc)
        return None


def semantic_write(*, job: Job, lookup: SemanticLookup | None, answer: CachedAnswer) -> None:
    """Keep a model's answer for paraphrases (reusing the lookup's embedding)."""
    policy = policy_for(current_schema())
    if policy.embedder is None:
        return
    try:
        if lookup is None:  # `refresh`: nothing was looked up
            key = semantic_key(
                model=job.model,
                messages=job.messages,
                params=job.params,
                embedder=policy.embedder.name,
                owner=policy.owner(job.user_id),
            )
            if key is None:
                return
            vector = policy.embedder.embed([key.prompt])[0]
        else:
            key, vector = lookup.key, lookup.vector
        semantic_store(policy=policy, key=key, vector=vector, answer=answer)
    except PromptTooLong:
        return
    except (EmbedderError, DatabaseError) as exc:
        logger.warning("semantic cache write skipped for job %s: %s", job.pk, exc)
