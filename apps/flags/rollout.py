"""Flag evaluation: deterministic buckets, so cohorts are sticky.

A subject (the user, or the whole tenant for `bucket_by=tenant`) is hashed with
the flag's key into 0.00-99.99; the flag is on for it when its bucket is below
the rollout percentage. Raising the percentage only adds subjects: everyone in at
5% is still in at 25%. Order of rules: disabled or outside the time window ->
off; a denied user or tenant -> off; an allowed one -> on; a tier condition not
met -> off; then the bucket.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class FlagRule:
    """A flag as evaluation needs it (a snapshot safe to share across threads)."""

    key: str
    enabled: bool
    rollout_percent: Decimal
    model: str
    rollout_model: str
    bucket_by: str = "user"
    allow_users: frozenset[str] = frozenset()
    deny_users: frozenset[str] = frozenset()
    allow_tenants: frozenset[str] = frozenset()
    deny_tenants: frozenset[str] = frozenset()
    tier: str = ""
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    scope: str = "platform"  # or "tenant"


@dataclass(frozen=True)
class Subject:
    tenant_schema: str
    user_id: int
    email: str
    tier: str


def bucket(flag_key: str, subject_id: str) -> Decimal:
    """0.00-99.99, uniform and stable for a (flag, subject) pair."""
    digest = hashlib.sha256(f"{flag_key}:{subject_id}".encode()).digest()
    return Decimal(int.from_bytes(digest[:8], "big") % 10_000) / 100


def evaluate(rule: FlagRule, subject: Subject, now: datetime) -> bool:
    """Is the flag on for this subject now?"""
    if not rule.enabled:
        return False
    if (rule.starts_at and now < rule.starts_at) or (rule.ends_at and now >= rule.ends_at):
        return False
    email = subject.email.lower()
    if email in rule.deny_users or subject.tenant_schema in rule.deny_tenants:
        return False
    if email in rule.allow_users or subject.tenant_schema in rule.allow_tenants:
        return True
    if rule.tier and subject.tier != rule.tier:
        return False
    subject_id = subject.tenant_schema if rule.bucket_by == "tenant" else f"{subject.tenant_schema}:{subject.user_id}"
    return bucket(rule.key, subject_id) < rule.rollout_percent
