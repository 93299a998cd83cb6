"""The admission pipeline: an ordered list of steps, each of which may refuse
the request (an ApiError), raise, or take something (rate-limit tokens, a
budget hold, a place in a single flight) that must be given back if the request
goes no further.

Each step is one object with `take` and `give_back`, so what a step takes and
how it is returned sit side by side. `admit` runs the steps in order; when one
refuses or raises, the steps already taken give back, latest first, and the
error propagates. A step may answer the request outright (an exact cache hit):
the steps after it do not run. The caller then stores what it admitted inside
`with admitted:` (an exception there gives everything back too), or calls
`admitted.give_back()` when it turns out to need nothing (an idempotent replay).
Adding a concern is one entry in a list of steps (`apps.jobs.submit` and
`apps.jobs.v1.embeddings` hold theirs).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from apps.accounts.selectors import Principal
from apps.cache.exact import CachedAnswer
from apps.cache.policy import CachePlan
from apps.catalog.selectors import ModelSpec
from apps.ratelimit.buckets import Bucket
from apps.ratelimit.limits import RateLimitState

logger = logging.getLogger(__name__)


@dataclass
class Admission:
    """One request on its way through the steps: what it asks for, and what
    each step found or took (set by the step that owns it)."""

    principal: Principal
    model: str  # the model the request names
    messages: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    cache_option: dict[str, Any] | None = None  # the request's `cache` option
    requested_fallbacks: list[str] | None = None  # the request's own `fallbacks`
    webhook_url: str = ""  # the request's own webhook URL
    id: uuid.UUID = field(default_factory=uuid.uuid4)  # the job's (or the call's) id: its hold and flight

    # The tenant's settings the steps read (Tenant step).
    fail_open: bool = False
    default_webhook_url: str = ""
    # The model (Model step: the catalog, then flags).
    spec: ModelSpec | None = None
    flags: dict[str, str] = field(default_factory=dict)
    # Size (Size step, or the surface that counted it).
    input_tokens: int = 0
    tokens: int = 0  # what the request may use: its input and its output allowance
    # The chain (Fallbacks step) and its cache plan (Cache step).
    fallbacks: list[str] = field(default_factory=list)
    chain: list[ModelSpec] = field(default_factory=list)  # the models the request may end up calling
    plan: CachePlan | None = None
    answer: CachedAnswer | None = None  # answered from the exact cache: no later step runs
    leader: uuid.UUID | None = None  # the identical request in flight this one follows
    flight: str = ""  # the flight key this request joined (led or followed)
    # What was taken.
    buckets: tuple[Bucket, ...] = ()  # the buckets `tokens_taken` came from
    tokens_taken: int = 0
    requests_taken: bool = False  # a cache hit's request-count (no tokens)
    limits: RateLimitState | None = None  # the caller's buckets after admission (for headers)
    held: int = 0  # micro-dollars held on the caller's budgets
    max_tokens: int | None = None  # what the hold was fitted to (requests that set none)

    @property
    def model_spec(self) -> ModelSpec:
        if self.spec is None:
            raise RuntimeError("no model step ran before this one")
        return self.spec


class Step(Protocol):
    """One concern of admission. `take` checks, and may refuse (raise an
    ApiError) or take something, recording it on the admission; `give_back`
    returns exactly that (it runs only when `take` returned)."""

    def take(self, admission: Admission) -> None: ...

    def give_back(self, admission: Admission) -> None: ...


class Admitted:
    """What `admit` returns: the admission, and the steps to undo if the caller
    does not keep it."""

    def __init__(self, admission: Admission, taken: list[Step]) -> None:
        self.admission = admission
        self._taken = taken

    def give_back(self) -> None:
        """Undo every step taken, latest first, each once. A give-back that fails
        is logged and the others still run: one broken Redis call must not keep
        a budget hold that a token refund came before."""
        while self._taken:
            step = self._taken.pop()
            try:
                step.give_back(self.admission)
            except Exception:
                logger.exception("admission: %s could not give back", type(step).__name__)

    def __enter__(self) -> Admission:
        return self.admission

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.give_back()


def admit(admission: Admission, steps: Sequence[Step]) -> Admitted:
    """Run `steps` in order on `admission` (see the module's docstring)."""
    taken: list[Step] = []
    try:
        for step in steps:
            step.take(admission)
            taken.append(step)
            if admission.answer is not None:
                break
    except BaseException:
        Admitted(admission, taken).give_back()
        raise
    return Admitted(admission, taken)
