"""Pricing and the ledger: what a call may cost (admission), what it did cost
(settlement), and the append-only entries that record it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.catalog.models import Provider
from apps.catalog.selectors import ModelSpec
from apps.llm.providers import output_allowance
from apps.tenants.models import Tenant

from .models import LedgerKind
from .money import cost_micros

_tenant_ids: dict[str, int] = {}
_ONE = Decimal(1)


def held_input_tokens(spec: ModelSpec, input_tokens: int) -> int:
    """The input tokens a hold counts: our count where it is the provider's own
    (OpenAI's tokenizers), else our estimate plus BUDGET_INPUT_ESTIMATE_MARGIN_PERCENT
    (another tokenizer may count more)."""
    if spec.provider == Provider.OPENAI:
        return input_tokens
    return -(-input_tokens * (100 + settings.BUDGET_INPUT_ESTIMATE_MARGIN_PERCENT) // 100)


def tier_multiple(spec: ModelSpec, tier: str | None) -> Decimal:
    """The price multiple of a call served at `tier`: the catalog's for a tier the
    model lists (its `service_tiers`), else 1 ("auto", "default", none, or a tier
    the catalog does not price)."""
    return dict(spec.service_tiers).get(tier or "", _ONE)


def hold_multiple(spec: ModelSpec, tier: str | None) -> Decimal:
    """The price multiple a request for service `tier` is held at on `spec`, never
    below what the call can be charged (tier_multiple of the tier the provider
    reports):

    - a tier the request names is held at its own multiple: the provider serves
      that tier or a cheaper one (OpenAI serves priority beyond its ramp limit at
      default; flex without room is a 429, not another tier), and a step that
      lacks it is skipped, never called at it;
    - "default" is 1: standard prices;
    - "auto" or none is the largest of 1 and every tier the model lists: OpenAI
      serves it at the tier its project is set to (default, unless the operator
      chose priority or bought scale units), which the catalog cannot know, so
      the hold assumes the dearest one it prices. A reported tier the catalog
      does not price is charged at 1, within that hold too."""
    if tier in (None, "", "auto"):
        return max((_ONE, *(multiple for _, multiple in spec.service_tiers)))
    return tier_multiple(spec, tier)


def worst_case_cost(
    spec: ModelSpec, *, input_tokens: int, max_tokens: int | None, choices: int = 1, tier: str | None = None
) -> int:
    """What a request may cost at most: its counted input (with a margin where the
    count is an estimate), and as many output tokens as it is sent (`max_tokens`,
    else the model's output limit) for each of its `choices` (n): the provider
    cannot bill more. At the requested service `tier`'s worst multiple
    (hold_multiple)."""
    return cost_micros(
        input_tokens=held_input_tokens(spec, input_tokens),
        output_tokens=choices * output_allowance(spec, max_tokens),
        input_price=spec.input_price_per_mtok,
        output_price=spec.output_price_per_mtok,
        multiple=hold_multiple(spec, tier),
    )


def chain_worst_case(
    steps: Sequence[ModelSpec],
    *,
    input_tokens: int,
    max_tokens: int | None,
    choices: int = 1,
    tier: str | None = None,
) -> int:
    """The hold of a job that may call any of `steps` (its model, its fallbacks),
    each at the requested service `tier`."""
    return max(
        worst_case_cost(step, input_tokens=input_tokens, max_tokens=max_tokens, choices=choices, tier=tier)
        for step in steps
    )


def chain_fit(
    steps: Sequence[ModelSpec],
    *,
    input_tokens: int,
    cap: int,
    room: int,
    choices: int = 1,
    tier: str | None = None,
) -> tuple[int, int] | None:
    """The largest max_tokens (at most `cap`) whose hold over `steps` (at `tier`)
    fits `room` micro-dollars, with that hold; None when not even one output token fits."""
    low, high = 0, cap  # invariant: low fits (or is 0), everything above high does not
    while low < high:
        middle = (low + high + 1) // 2
        if chain_worst_case(steps, input_tokens=input_tokens, max_tokens=middle, choices=choices, tier=tier) <= room:
            low = middle
        else:
            high = middle - 1
    if low < 1:
        return None
    return low, chain_worst_case(steps, input_tokens=input_tokens, max_tokens=low, choices=choices, tier=tier)


def call_cost(
    spec: ModelSpec, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0, tier: str | None = None
) -> int:
    """What a call costs at the catalog's prices: input, the part of it the
    provider served from its prompt cache (at the cached-input price, where the
    catalog sets one), and output (reasoning tokens are output), all at the
    multiple of the service `tier` that served it (tier_multiple)."""
    return cost_micros(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_price=spec.input_price_per_mtok,
        output_price=spec.output_price_per_mtok,
        cached_tokens=cached_tokens,
        cached_price=spec.cached_input_price_per_mtok,
        multiple=tier_multiple(spec, tier),
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
    at: datetime | None = None,
) -> bool:
    """Append one entry and add it to the public daily rollup, in one statement
    (atomic by itself; in the current tenant schema). False, and nothing written,
    when this job attempt already has an entry of this kind: a redelivered task or
    a retried settlement cannot charge twice.

    One round trip, not a transaction's four: the rollup row of a (tenant, day,
    model) is shared by every charge, and its row lock is held only while this
    statement runs (or until the caller's transaction commits).

    `at` dates the entry (and its rollup day): a charge is dated when its hold was
    made, so it lands in the period whose counter it was settled into, and a
    counter rebuilt from the ledger agrees with the one it replaces."""
    now = at or timezone.now()
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
