"""Pricing and the ledger: what a call may cost (admission), what it did cost
(settlement), and the append-only entries that record it."""

from __future__ import annotations

import uuid

from django.db import connection
from django.utils import timezone

from apps.catalog.selectors import ModelSpec
from apps.tenants.models import Tenant

from .models import LedgerKind
from .money import cost_micros

_tenant_ids: dict[str, int] = {}


def worst_case_cost(spec: ModelSpec, *, input_tokens: int, max_tokens: int | None) -> int:
    """What a request may cost at most: its counted input, and as many output tokens
    as it allows (`max_tokens`, else the model's output limit)."""
    return cost_micros(
        input_tokens=input_tokens,
        output_tokens=max_tokens or spec.max_output_tokens,
        input_price=spec.input_price_per_mtok,
        output_price=spec.output_price_per_mtok,
    )


def call_cost(spec: ModelSpec, *, input_tokens: int, output_tokens: int) -> int:
    return cost_micros(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_price=spec.input_price_per_mtok,
        output_price=spec.output_price_per_mtok,
    )


def _tenant_id(schema: str) -> int:
    # Schema names never change owner; cached for the process's life.
    if schema not in _tenant_ids:
        _tenant_ids[schema] = Tenant.objects.only("id").get(schema_name=schema).pk
    return _tenant_ids[schema]


def ledger_record(
    *,
    kind: LedgerKind,
    user_id: int,
    model: str,
    cost: int,
    job_id: uuid.UUID | None = None,
    attempt: int = 0,
    call: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    saved: int = 0,
    note: str = "",
) -> bool:
    """Append one entry and add it to the public daily rollup, in one statement
    (atomic by itself; in the current tenant schema). False, and nothing written,
    when this job attempt already has an entry of this kind: a redelivered task or
    a retried settlement cannot charge twice.

    One round trip, not a transaction's four: the rollup row of a (tenant, day,
    model) is shared by every charge, and its row lock is held only while this
    statement runs (or until the caller's transaction commits)."""
    now = timezone.now()
    refund = kind == LedgerKind.REFUND
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH entry AS ("
            " INSERT INTO billing_ledgerentry (user_id, job_id, attempt, call, model, kind, input_tokens,"
            " output_tokens, cost_micros, saved_micros, note, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (job_id, attempt, call, kind) WHERE kind IN ('charge', 'refund') DO NOTHING RETURNING 1)"
            " INSERT INTO public.controls_spendrollup"
            " (tenant_id, day, model, requests, input_tokens, output_tokens, cost_micros, saved_micros)"
            " SELECT %s, %s, %s, %s, %s, %s, %s, %s FROM entry"
            " ON CONFLICT (tenant_id, day, model) DO UPDATE SET"
            " requests = controls_spendrollup.requests + EXCLUDED.requests,"
            " input_tokens = controls_spendrollup.input_tokens + EXCLUDED.input_tokens,"
            " output_tokens = controls_spendrollup.output_tokens + EXCLUDED.output_tokens,"
            " cost_micros = controls_spendrollup.cost_micros + EXCLUDED.cost_micros,"
            " saved_micros = controls_spendrollup.saved_micros + EXCLUDED.saved_micros",
            [
                user_id,
                job_id,
                attempt,
                call,
                model,
                LedgerKind(kind).value,
                input_tokens,
                output_tokens,
                cost,
                saved,
                note,
                now,
                _tenant_id(connection.schema_name),  # type: ignore[attr-defined]
                now.date(),
                model,
                0 if refund else 1,
                0 if refund else input_tokens,
                0 if refund else output_tokens,
                cost,
                saved,
            ],
        )
        return bool(cursor.rowcount)


def ledger_cached(*, user_id: int, spec: ModelSpec, input_tokens: int, output_tokens: int, job_id: uuid.UUID) -> None:
    """An answer served from cache: cost 0, and what the call would have cost saved."""
    ledger_record(
        kind=LedgerKind.CACHED,
        user_id=user_id,
        job_id=job_id,
        model=spec.slug,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=0,
        saved=call_cost(spec, input_tokens=input_tokens, output_tokens=output_tokens),
    )
