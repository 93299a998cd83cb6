"""Service tiers in the pricing: the multiple a call is charged at, the one a
request is held at, and the Decimal maths of both (rounded up once, after the
multiple), on catalog snapshots as the catalog builds them."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from apps.billing.services import call_cost, chain_fit, chain_worst_case, hold_multiple, tier_multiple, worst_case_cost
from apps.catalog.models import SERVICE_TIERS, Provider
from apps.catalog.selectors import ModelSpec

SPEC = ModelSpec(
    slug="tiered",
    provider=Provider.OPENAI,
    provider_model_name="tiered",
    base_url="http://127.0.0.1:9/v1",
    api_key_env="",
    context_window=128_000,
    max_output_tokens=4096,
    input_price_per_mtok=Decimal("0.15"),
    output_price_per_mtok=Decimal("0.6"),
    enabled=True,
    service_tiers=(("flex", Decimal("0.5")), ("priority", Decimal("1.7"))),
)
PLAIN = replace(SPEC, slug="plain", service_tiers=())
CHEAP_ONLY = replace(SPEC, slug="cheap", service_tiers=(("flex", Decimal("0.5")),))


@pytest.mark.parametrize(
    ("spec", "tier", "charged", "held"),
    [
        (SPEC, "priority", "1.7", "1.7"),
        (SPEC, "flex", "0.5", "0.5"),
        (SPEC, "default", "1", "1"),
        (SPEC, "auto", "1", "1.7"),  # served at default unless the project says priority: held at the dearest
        (SPEC, None, "1", "1.7"),
        (SPEC, "scale", "1", "1"),  # a tier the catalog does not price
        (PLAIN, "auto", "1", "1"),
        (CHEAP_ONLY, "auto", "1", "1"),  # never below 1: auto is never served at flex
    ],
)
def test_the_multiple_a_tier_is_charged_and_held_at(spec: ModelSpec, tier: str | None, charged: str, held: str):
    assert tier_multiple(spec, tier) == Decimal(charged)
    assert hold_multiple(spec, tier) == Decimal(held)


def test_the_multiple_applies_before_the_one_rounding():
    # 10 output tokens at $0.15/M are 1.5 micro-dollars: twice that is 3, not 2 x 2.
    spec = replace(PLAIN, output_price_per_mtok=Decimal("0.15"), service_tiers=(("priority", Decimal(2)),))
    assert call_cost(spec, input_tokens=0, output_tokens=10) == 2
    assert call_cost(spec, input_tokens=0, output_tokens=10, tier="priority") == 3
    # Cached input is at the multiple too: (8 x 0.15 + 2 x 0.075 + 5 x 0.6) x 1.7 = 7.395, up to 8.
    cached = replace(SPEC, cached_input_price_per_mtok=Decimal("0.075"))
    assert call_cost(cached, input_tokens=10, output_tokens=5, cached_tokens=2, tier="priority") == 8


def test_no_served_tier_is_charged_above_the_hold():
    """Whatever tier the provider reports for an auto request, and a named tier
    served as itself or at default below it, the charge fits the hold."""
    for spec in (SPEC, PLAIN, CHEAP_ONLY):
        hold = worst_case_cost(spec, input_tokens=100, max_tokens=50, tier="auto")
        for reported in (*SERVICE_TIERS, "something-new", ""):
            assert call_cost(spec, input_tokens=100, output_tokens=50, tier=reported) <= hold, (spec.slug, reported)
    for tier, _ in SPEC.service_tiers:
        hold = worst_case_cost(SPEC, input_tokens=100, max_tokens=50, tier=tier)
        assert call_cost(SPEC, input_tokens=100, output_tokens=50, tier=tier) <= hold


def test_a_chain_is_held_at_the_tier_on_each_step_and_fitted_at_it():
    free_input = replace(PLAIN, input_price_per_mtok=Decimal(0), output_price_per_mtok=Decimal(1))
    tiered = replace(free_input, slug="tiered", service_tiers=(("priority", Decimal(2)),))
    # The step without priority is skipped at admission's and the chain's missing(); held at 1x here.
    assert chain_worst_case([free_input, tiered], input_tokens=10, max_tokens=100, tier="priority") == 200
    assert chain_worst_case([free_input, tiered], input_tokens=10, max_tokens=100, tier="default") == 100
    assert chain_fit([free_input, tiered], input_tokens=10, cap=1000, room=1000, tier="priority") == (500, 1000)
    assert chain_fit([free_input, tiered], input_tokens=10, cap=1000, room=1000, tier="default") == (1000, 1000)
    assert chain_fit([tiered], input_tokens=10, cap=1000, room=1, tier="priority") is None
