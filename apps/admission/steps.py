"""The admission steps, each one concern: what it checks, what it takes, and how
it gives that back (see pipeline.py). The lists of steps a surface runs are
built from these (`apps.jobs.submit.JOB_ADMISSION`, the embeddings surface's)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from apps.billing.budgets import budget_hold, budget_release
from apps.billing.services import call_cost, chain_fit, chain_worst_case
from apps.cache.exact import exact_get, flight_join, flight_land
from apps.cache.policy import CacheMode, cache_plan
from apps.catalog.selectors import ModelSpec, model_get, models_enabled
from apps.controls.fallbacks import fallbacks_for
from apps.controls.switches import switch_check
from apps.core.errors import InvalidRequest, NotFound
from apps.core.webhooks import webhook_url_check
from apps.flags.rollout import Subject
from apps.flags.selectors import flags_route
from apps.llm.capabilities import PROVIDER_EXTRAS, missing
from apps.llm.content import content_admit, content_tokens
from apps.llm.tokens import count_message_tokens, count_schema_tokens
from apps.observability import metrics
from apps.ratelimit.buckets import Unit
from apps.ratelimit.limits import buckets_for, ratelimit_admit, ratelimit_refund
from apps.tenants.db import tenant_connection

from .pipeline import Admission

logger = logging.getLogger(__name__)


class CacheMiss(NotFound):
    """`cache.mode` "only" and no cached answer: nothing was called."""


class _Checks:
    """A step that only checks: nothing to give back."""

    def give_back(self, admission: Admission) -> None:
        return None


class Tenant(_Checks):
    """The caller's tenant settings that later steps read (the key was resolved
    to a principal, tenant, user and tier by authentication)."""

    def take(self, admission: Admission) -> None:
        tenant = tenant_connection().tenant
        admission.fail_open = tenant.ratelimit_fail_open
        admission.default_webhook_url = tenant.webhook_url


class Model(_Checks):
    """The catalog's model, then the flags that may route the request to a
    rollout model (evaluated before the kill switches, which then apply to the
    model actually called)."""

    def take(self, admission: Admission) -> None:
        spec = model_get(admission.model)
        if spec is not None and spec.enabled and not spec.supports_chat:
            raise InvalidRequest(
                f"{spec.slug} does not serve chat completions (GET /v1/models says what each model serves).",
                code="unsupported_model",
                param="model",
            )
        if spec is None or not spec.enabled:
            available = ", ".join(sorted(s.slug for s in models_enabled())) or "none"
            raise InvalidRequest(
                f"Model {admission.model!r} does not exist or is disabled. Available models: {available}.",
                code="model_not_found",
                param="model",
            )
        principal = admission.principal
        subject = Subject(principal.tenant_schema, principal.user_id, principal.email, principal.tier)
        routed, flags = flags_route(subject, spec.slug)
        if routed != spec.slug:
            rollout = model_get(routed)
            if rollout is not None and rollout.enabled:
                spec = rollout
            else:
                logger.warning("flag rollout model %r is unavailable; %s keeps %s", routed, flags, spec.slug)
                flags = {key: "off" for key in flags}
        admission.spec, admission.flags = spec, flags


class Switches(_Checks):
    """The kill switches: platform, tenant, user, model."""

    def take(self, admission: Admission) -> None:
        principal = admission.principal
        switch_check(tenant_schema=principal.tenant_schema, user_id=principal.user_id, model=admission.model_spec.slug)


class Size(_Checks):
    """max_tokens and the context window, counting the messages, the tool
    definitions and response schema, and media parts the model can take (held at a
    worst case: images, audio and files count as nothing to tiktoken)."""

    def take(self, admission: Admission) -> None:
        spec = admission.model_spec
        max_tokens = admission.params.get("max_tokens")
        if max_tokens is not None and max_tokens > spec.max_output_tokens:
            raise InvalidRequest(
                f"max_tokens is {max_tokens}, above the {spec.max_output_tokens} output tokens {spec.slug} allows.",
                code="max_tokens_too_large",
                param="max_tokens",
            )
        input_tokens = input_count(spec, admission, refuse=True)
        needed = input_tokens + (max_tokens or 0)
        if needed > spec.context_window:
            # A 400, as OpenAI answers (SDKs raise BadRequestError; LangChain and
            # LiteLLM look for the code).
            raise InvalidRequest(
                f"The request needs {needed} tokens ({input_tokens} in the messages"
                f"{f' + {max_tokens} max_tokens' if max_tokens else ''}), above the {spec.context_window}-token"
                f" context window of {spec.slug}.",
                code="context_length_exceeded",
                param="messages",
            )
        admission.input_tokens = input_tokens
        # Each of n choices may use the whole output allowance (the input is billed once).
        choices = int(admission.params.get("n") or 1)
        admission.tokens = input_tokens + choices * int(max_tokens or spec.max_output_tokens)


def input_count(spec: ModelSpec, admission: Admission, *, refuse: bool = False) -> int:
    """The request's input as `spec` counts it: the messages and the tool
    definitions and schema in its encoding, the media parts by its provider's
    rule (`refuse`: a part it cannot take is a 400)."""
    media = (content_admit if refuse else content_tokens)(spec=spec, messages=admission.messages)
    return (
        count_message_tokens(admission.messages, spec.encoding)
        + count_schema_tokens(admission.params, spec.encoding)
        + media
    )


def chain_input(steps: list[ModelSpec], admission: Admission) -> int:
    """The input a hold counts over the chain: the most any step counts (a
    fallback may use another encoding, or count images by another provider's
    rule), so no step's call can cost more than its hold."""
    spec = admission.model_spec
    counts = {(spec.encoding, spec.provider, spec.max_tokens_per_part): admission.input_tokens}
    for step in steps:
        rule = (step.encoding, step.provider, step.max_tokens_per_part)
        if rule not in counts:
            counts[rule] = input_count(step, admission)
    return max(counts.values())


class Capabilities(_Checks):
    """What the request needs that the model cannot take (tools, a JSON schema,
    reasoning settings, provider extras, store, a service tier): a 400 naming
    the field."""

    def take(self, admission: Admission) -> None:
        lacking = missing(admission.model_spec, admission.params)
        if lacking is not None:
            field, why = lacking
            code = "unknown_parameter" if field in PROVIDER_EXTRAS else "unsupported_parameter"
            raise InvalidRequest(why, code=code, param=field)


class Webhook(_Checks):
    """The request's own webhook URL must be one we may call (SSRF)."""

    def take(self, admission: Admission) -> None:
        if admission.webhook_url:
            webhook_url_check(admission.webhook_url)


class Fallbacks(_Checks):
    """The chain after the model: the request's `fallbacks` (each one the
    tenant's policy allows), else the policy's."""

    def take(self, admission: Admission) -> None:
        principal, spec = admission.principal, admission.model_spec
        admission.fallbacks = fallbacks_for(
            tenant_schema=principal.tenant_schema,
            tier=principal.tier,
            model=spec.slug,
            requested=admission.requested_fallbacks,
        )
        admission.chain = [spec, *(s for s in map(model_get, admission.fallbacks) if s is not None)]


class Cache:
    """The cache plan, and the exact cache: a hit answers the request now (no
    tokens, no budget, no worker), but a request is a request: it pays the
    user's and tenant's requests_per_minute, else a hit would be a way around
    them. `cache.mode` "only" and no hit: refused, nothing called."""

    def take(self, admission: Admission) -> None:
        principal, spec = admission.principal, admission.model_spec
        plan = cache_plan(
            tenant_schema=principal.tenant_schema,
            model=spec.slug,
            messages=admission.messages,
            params=admission.params,
            option=admission.cache_option,
            user_id=principal.user_id,
        )
        admission.plan = plan
        if not (plan.lookup and plan.key):
            return
        answer = exact_get(schema=principal.tenant_schema, key=plan.key)
        metrics.record_cache_request("exact", hit=answer is not None)
        if answer is not None:
            buckets = buckets_for(
                tenant_schema=principal.tenant_schema, user_id=principal.user_id, tier=principal.tier, spec=None
            )
            admission.buckets = tuple(bucket for bucket in buckets if bucket.unit is Unit.REQUESTS)
            admission.limits = ratelimit_admit(admission.buckets, 0, fail_open=admission.fail_open)
            admission.requests_taken = admission.limits is not None
            admission.answer = answer
            return
        if plan.mode is CacheMode.ONLY:
            raise CacheMiss(
                "No cached answer for this request, and cache.mode is 'only': no model was called.",
                code="cache_miss",
                param="cache.mode",
            )

    def give_back(self, admission: Admission) -> None:
        if admission.requests_taken:
            ratelimit_refund(admission.buckets, tokens=0)
            admission.requests_taken = False


class TokenBuckets:
    """Rate limits by tokens: what the request may use (`admission.tokens`)
    from the user's, tenant's and model's buckets. The limiter unreachable and
    the tenant failing open: nothing taken, nothing to give back."""

    def take(self, admission: Admission) -> None:
        principal = admission.principal
        buckets = buckets_for(
            tenant_schema=principal.tenant_schema,
            user_id=principal.user_id,
            tier=principal.tier,
            spec=admission.model_spec,
        )
        limits = ratelimit_admit(buckets, admission.tokens, fail_open=admission.fail_open)
        admission.limits = limits
        if limits is not None:
            admission.buckets, admission.tokens_taken = buckets, admission.tokens

    def give_back(self, admission: Admission) -> None:
        if admission.tokens_taken:
            ratelimit_refund(admission.buckets, tokens=admission.tokens_taken)
            admission.tokens_taken = 0


class BudgetHold:
    """The worst-case cost held on every budget of the caller, before anything
    is stored: the dearest model the chain may call, at the output it is sent
    (for each of n choices), and the service tier it asked for
    (billing.services.hold_multiple).
    Larger than what is left of a budget: refused naming the max_tokens that
    fits or, when the request set none, held and sent at that max_tokens."""

    def take(self, admission: Admission) -> None:
        steps = admission.chain or [admission.model_spec]
        requested_max = admission.params.get("max_tokens")
        input_tokens, choices = chain_input(steps, admission), int(admission.params.get("n") or 1)
        tier = admission.params.get("service_tier")
        cap = requested_max or max(step.max_output_tokens for step in steps)
        hold = budget_hold(
            principal=admission.principal,
            job_id=admission.id,
            amount_micros=chain_worst_case(
                steps, input_tokens=input_tokens, max_tokens=requested_max, choices=choices, tier=tier
            ),
            fit=lambda room: chain_fit(
                steps, input_tokens=input_tokens, cap=cap, room=room, choices=choices, tier=tier
            ),
            adjust=requested_max is None,
        )
        admission.held, admission.max_tokens = hold.amount, hold.max_tokens

    def give_back(self, admission: Admission) -> None:
        if admission.held:
            budget_release(schema=admission.principal.tenant_schema, job_id=admission.id)
            admission.held = 0


class BudgetReserve(BudgetHold):
    """A call's input cost held on the caller's budgets (embeddings: no output,
    nothing to fit)."""

    def take(self, admission: Admission) -> None:
        cost = call_cost(admission.model_spec, input_tokens=admission.input_tokens, output_tokens=0)
        admission.held = budget_hold(principal=admission.principal, job_id=admission.id, amount_micros=cost).amount


@dataclass(frozen=True)
class SingleFlight:
    """Identical cacheable requests in flight make one provider call: the first
    leads, the others follow it and are answered when it lands. Last in the list:
    a request its limits refuse never leads a flight (its followers would be
    released to call the model on their own). `release` runs the followers of a
    flight given back by its leader (the caller's: they are its stored jobs).
    `refresh` asks for a new answer: it leads its own call, never follows."""

    release: Callable[[list[uuid.UUID]], None]

    def take(self, admission: Admission) -> None:
        plan = admission.plan
        if plan is None or not plan.key or plan.mode is not CacheMode.USE:
            return
        schema = admission.principal.tenant_schema
        admission.leader = flight_join(schema=schema, key=plan.key, job_id=admission.id)
        admission.flight = plan.key

    def give_back(self, admission: Admission) -> None:
        if not admission.flight:
            return
        # A follower only leaves the flight; a leader lands it, and its followers run.
        followers = flight_land(schema=admission.principal.tenant_schema, key=admission.flight, job_id=admission.id)
        admission.flight, admission.leader = "", None
        if followers:
            self.release(followers)
