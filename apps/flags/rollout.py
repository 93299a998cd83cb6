"""Flag evaluation: deterministic buckets, so cohorts are sticky.

A subject (the user, or the whole tenant for `bucket_by=tenant`) is hashed with
the flag's key into 0.00-99.99; the flag is on for it when its bucket is below
the rollout percentage. Raising the percentage only adds subjects: everyone in at
5% is still in at 25%. Order of rules: disabled or outside the time window ->
off; a denied user or tenant -> off; an allowed one -> on; a tier condition not
met -> off; then the bucket.

User lists match a user within their tenant. A platform flag names users as
`<schema>:<e-mail>` (`acme:alice@acme.test`): an e-mail is a tenant's to give
its users, so a bare e-mail in a platform flag matches nobody (a tenant could
otherwise create a user with the listed address and join the list). A tenant's
own flag is evaluated for its users only, so it may name them by bare e-mail.
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


def _listed(entries: frozenset[str], rule: FlagRule, subject: Subject) -> bool:
    email = subject.email.lower()
    if f"{subject.tenant_schema}:{email}" in entries:
        return True
    return rule.scope == "tenant" and email in entries


def _live(rule: FlagRule, now: datetime) -> bool:
    if not rule.enabled:
        return False
    return not ((rule.starts_at and now < rule.starts_at) or (rule.ends_at and now >= rule.ends_at))


def evaluate(rule: FlagRule, subject: Subject, now: datetime) -> bool:
    """Is the flag on for this subject now?"""
    if not _live(rule, now):
        return False
    if _listed(rule.deny_users, rule, subject) or subject.tenant_schema in rule.deny_tenants:
        return False
    if _listed(rule.allow_users, rule, subject) or subject.tenant_schema in rule.allow_tenants:
        return True
    if rule.tier and subject.tier != rule.tier:
        return False
    subject_id = subject.tenant_schema if rule.bucket_by == "tenant" else f"{subject.tenant_schema}:{subject.user_id}"
    return bucket(rule.key, subject_id) < rule.rollout_percent


def concerns_tenant(rule: FlagRule, tenant_schema: str, now: datetime) -> bool:
    """Does the flag take part in any decision for this tenant's users? Its own
    flags always do; a platform flag when it is live, the tenant is not denied,
    and its share is above 0 or it allows the tenant or some of its users. (A
    platform flag aimed only at other tenants is none of this tenant's business.)"""
    if rule.scope == "tenant":
        return True
    if not _live(rule, now) or tenant_schema in rule.deny_tenants:
        return False
    prefix = f"{tenant_schema}:"
    return (
        rule.rollout_percent > 0
        or tenant_schema in rule.allow_tenants
        or any(entry.startswith(prefix) for entry in rule.allow_users)
    )


def concerns(rule: FlagRule, subject: Subject, now: datetime) -> bool:
    """Does the flag decide anything for this user: it is on for them, or they are
    in its experiment's other cohort (it concerns their tenant, and neither a deny
    list nor its tier condition leaves them out)? What a user may see of flags,
    and what their jobs record."""
    if evaluate(rule, subject, now):
        return True
    if not concerns_tenant(rule, subject.tenant_schema, now):
        return False
    if rule.scope == "tenant":
        return True
    if _listed(rule.deny_users, rule, subject):
        return False
    return not (rule.tier and subject.tier != rule.tier)
