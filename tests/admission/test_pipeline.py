"""The admission pipeline gives back exactly what its steps took.

Run against the real steps of a job's admission (the catalog, flags, switches,
cache, rate limits and budgets in Postgres and Valkey): a refusal or an
exception after any step leaves the caller's token and request buckets full,
no budget hold, and no place in a single flight, as read back from Valkey."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.accounts.authentication import principal_from_header
from apps.accounts.selectors import Principal
from apps.admission.pipeline import Admission, Admitted, Step, admit
from apps.admission.steps import BudgetHold, SingleFlight, TokenBuckets
from apps.billing.models import UserBudget
from apps.billing.windows import counter_key, period_window
from apps.cache.exact import CachedAnswer, cache_redis, exact_put
from apps.cache.policy import cache_plan
from apps.core.errors import ApiError, InvalidRequest
from apps.jobs.models import Job, JobStatus
from apps.jobs.submit import JOB_ADMISSION, JobRequest, job_submit
from apps.ratelimit.limits import limits_cache_clear
from apps.ratelimit.models import UserRateLimit
from tests.support import Persona, Personas, wait_for

MESSAGES = [{"role": "user", "content": "admit me, then send me back"}]
BURST = 20_000  # tokens; refilled at 1 a second, so a missing give-back shows


def _store() -> Any:  # untyped: redis-py answers bytes here
    return redis.Redis.from_url(settings.REDIS_URL)


class Refuse:
    """A step that refuses, as a real one does (an ApiError)."""

    def take(self, admission: Admission) -> None:
        raise InvalidRequest("refused by the test's step", code="test_refusal")

    def give_back(self, admission: Admission) -> None:
        raise AssertionError("a step that refused has nothing to give back")


class Boom(Refuse):
    """A step that fails (a bug, a lost connection)."""

    def take(self, admission: Admission) -> None:
        raise RuntimeError("the test's step broke")


@pytest.fixture
def alice(committed_personas: Personas) -> Iterator[Persona]:
    """Alice with a token and a request limit of her own, a daily budget, and
    nothing of hers left in Valkey."""
    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserRateLimit.objects.create(
            user_id=alice.user_id, tokens_per_minute=60, burst_tokens=BURST, requests_per_minute=1
        )
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("100"))
    for store in (_store(), cache_redis()):
        for pattern in ("aip:{acme}:rl:*", "aip:{acme}:resv:*", "aip:{acme}:budget:*", "aip:{acme}:cache:*"):
            for key in store.scan_iter(match=pattern):
                store.delete(key)
    yield alice


def _limit(persona: Persona, **fields: Any) -> None:
    with tenant_context(persona.tenant):
        UserRateLimit.objects.filter(user_id=persona.user_id).update(**fields)
    limits_cache_clear()


def _principal(persona: Persona) -> Principal:
    with tenant_context(persona.tenant):
        principal = principal_from_header(f"Bearer {persona.key}")
    assert principal is not None
    return principal


def _admission(principal: Principal, **overrides: Any) -> Admission:
    fields: dict[str, Any] = {
        "principal": principal,
        "model": "routing-probe",  # no worker serves it: nothing runs behind the test's back
        "messages": MESSAGES,
        "params": {"temperature": 0, "max_tokens": 1000},  # deterministic: cacheable, so a flight applies
    }
    return Admission(**{**fields, **overrides})


def _taken(persona: Persona) -> dict[str, Any]:
    """What Valkey says alice holds: bucket levels below full, budget holds, flights."""
    store = _store()
    user = f"aip:{{acme}}:rl:user:{persona.user_id}"
    tokens = store.hget(user, "tokens")
    requests = store.hget(f"{user}:req", "tokens")
    counter = counter_key(schema="acme", scope="user", user_id=persona.user_id, window=period_window("day"))
    return {
        "tokens_below_full": BURST - float(tokens) if tokens is not None else 0.0,
        "requests_below_full": 1 - float(requests) if requests is not None else 0.0,
        "reserved": int(store.hget(counter, "reserved") or 0),
        "holds": sorted(k.decode() for k in store.scan_iter(match="aip:{acme}:resv:*")),
        "flights": sorted(k.decode() for k in store.scan_iter(match="aip:{acme}:cache:flight:*")),
        "followers": sorted(
            member.decode()
            for key in store.scan_iter(match="aip:{acme}:cache:followers:*")
            for member in store.smembers(key)
        ),
    }


NOTHING = {
    "tokens_below_full": 0.0,
    "requests_below_full": 0.0,
    "reserved": 0,
    "holds": [],
    "flights": [],
    "followers": [],
}


def _names(steps: list[Step]) -> list[str]:
    return [type(step).__name__ for step in steps]


def test_the_job_steps_take_tokens_a_hold_and_a_flight(alice: Persona):
    """The baseline the other tests undo: all three are taken, and seen in Valkey."""
    admission = _admission(_principal(alice))
    with tenant_context(alice.tenant):
        admitted = admit(admission, JOB_ADMISSION)
    taken = _taken(alice)
    assert taken["tokens_below_full"] >= admission.tokens - 5 > 1000
    assert taken["reserved"] == admission.held > 0
    assert taken["holds"] == [f"aip:{{acme}}:resv:{admission.id}"]
    assert len(taken["flights"]) == 1
    with tenant_context(alice.tenant):
        admitted.give_back()
    assert _taken(alice) == NOTHING


@pytest.mark.parametrize("failure", [Refuse, Boom], ids=["refusal", "exception"])
@pytest.mark.parametrize("after", range(len(JOB_ADMISSION)), ids=_names(JOB_ADMISSION))
def test_a_failure_after_any_step_gives_back_everything_taken(alice: Persona, after: int, failure: type[Refuse]):
    steps = [*JOB_ADMISSION[: after + 1], failure()]
    with tenant_context(alice.tenant), pytest.raises((ApiError, RuntimeError)) as raised:
        admit(_admission(_principal(alice)), steps)
    assert isinstance(raised.value, ApiError if failure is Refuse else RuntimeError)
    assert _taken(alice) == NOTHING


def test_the_real_budget_refusal_gives_the_tokens_and_the_flight_back(alice: Persona):
    with tenant_context(alice.tenant):
        UserBudget.objects.filter(user_id=alice.user_id).update(limit_usd=Decimal("0.000001"))
        with pytest.raises(ApiError) as refused:
            admit(_admission(_principal(alice)), JOB_ADMISSION)
    assert refused.value.code == "budget_exceeded"
    assert _taken(alice) == NOTHING


def test_the_real_rate_limit_refusal_takes_nothing(alice: Persona):
    _limit(alice, burst_tokens=500)  # below what the request may use
    with tenant_context(alice.tenant), pytest.raises(ApiError) as refused:
        admit(_admission(_principal(alice)), JOB_ADMISSION)
    assert refused.value.code == "rate_limit_too_large"
    assert _taken(alice) == NOTHING


def test_a_give_back_that_fails_does_not_stop_the_others(alice: Persona):
    """A step whose give-back raises is logged; the steps before it still give back."""

    class Stuck(TokenBuckets):
        def give_back(self, admission: Admission) -> None:
            raise RuntimeError("the give-back broke")

    steps: list[Step] = [*JOB_ADMISSION[:-3], Stuck(), BudgetHold(), Boom()]
    with tenant_context(alice.tenant), pytest.raises(RuntimeError, match="the test's step broke"):
        admit(_admission(_principal(alice)), steps)
    taken = _taken(alice)
    assert taken["reserved"] == 0 and taken["holds"] == []  # the hold came back
    assert taken["tokens_below_full"] > 1000  # the broken one kept its tokens, as it must


def test_storing_that_raises_gives_back_what_admission_took(alice: Persona):
    with tenant_context(alice.tenant):
        admitted = admit(_admission(_principal(alice)), JOB_ADMISSION)
        assert _taken(alice) != NOTHING
        with pytest.raises(RuntimeError), admitted:
            raise RuntimeError("the INSERT failed")
    assert _taken(alice) == NOTHING


def test_an_exact_hit_pays_a_request_and_gives_it_back_when_not_kept(alice: Persona):
    principal = _principal(alice)
    admission = _admission(principal, messages=[{"role": "user", "content": "answered from the cache"}])
    with tenant_context(alice.tenant):
        plan = cache_plan(
            tenant_schema="acme",
            model="routing-probe",
            messages=admission.messages,
            params=admission.params,
            option=None,
            user_id=alice.user_id,
        )
        answer = CachedAnswer(
            output="cached",
            finish_reason="stop",
            input_tokens=3,
            output_tokens=1,
            usage_estimated=False,
            response_model="routing-probe",
            created="2026-01-01T00:00:00+00:00",
        )
        exact_put(schema="acme", key=plan.key, answer=answer, ttl=60, max_entries=100)
        admitted = admit(admission, JOB_ADMISSION)
        # Answered at the cache step: no tokens, no hold, no flight; one request.
        assert admission.answer == answer
        assert _taken(alice) == {**NOTHING, "requests_below_full": pytest.approx(1, abs=0.01)}
        admitted.give_back()  # an idempotent replay: this request made nothing
    assert _taken(alice) == NOTHING


def test_a_refused_leader_releases_its_stored_follower_to_run_on_its_own(alice: Persona, worker, upstream):
    """The leader admitted (it leads the flight), then given back before it is
    stored; the follower, stored and waiting for it, is sent to its queue."""
    _limit(alice, requests_per_minute=None)  # two requests
    principal = _principal(alice)
    body = {"temperature": 0, "max_tokens": 20}
    leader = _admission(principal, model="local-small", params=body)
    with tenant_context(alice.tenant):
        admitted = admit(leader, JOB_ADMISSION)
        assert leader.flight and leader.leader is None
        follower = job_submit(
            principal=principal, request=JobRequest(model="local-small", messages=MESSAGES, params=body)
        ).job
        assert _taken(alice)["followers"] == [str(follower.pk)]
        admitted.give_back()

        def ended() -> bool:
            return Job.objects.get(pk=follower.pk).status == JobStatus.SUCCEEDED

        wait_for(ended)
    assert _taken(alice)["followers"] == []


def test_a_follower_whose_leader_landed_before_it_was_stored_runs_on_its_own(alice: Persona, worker, upstream):
    """The follower joined the flight at admission, its leader landed (and found no
    row for it), then the follower's row was committed: it sends itself."""
    _limit(alice, requests_per_minute=None)  # two requests
    principal = _principal(alice)
    body = {"temperature": 0, "max_tokens": 20}
    steps: list[Step] = [*JOB_ADMISSION[:-1], SingleFlight(release=lambda ids: None)]  # the leader finds no row
    leader = _admission(principal, model="local-small", params=body)
    with tenant_context(alice.tenant):
        leading = admit(leader, steps)
        original = list(JOB_ADMISSION)
        JOB_ADMISSION[-1] = _LandFirst(original[-1], leading)
        try:
            job = job_submit(
                principal=principal, request=JobRequest(model="local-small", messages=MESSAGES, params=body)
            ).job
        finally:
            JOB_ADMISSION[:] = original

        def ended() -> bool:
            return Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED

        wait_for(ended)


class _LandFirst:
    """The real single flight; once this request has joined, its leader lands
    (given back), as if it ended between the follower's join and its commit."""

    def __init__(self, real: Step, leading: Admitted) -> None:
        self.real, self.leading = real, leading

    def take(self, admission: Admission) -> None:
        self.real.take(admission)
        assert admission.leader is not None  # it follows
        self.leading.give_back()

    def give_back(self, admission: Admission) -> None:
        self.real.give_back(admission)
