"""Money: integer micro-dollars (1 USD = 1,000,000) everywhere it is stored or
counted, Decimal where prices are. Never float.

Catalog prices are USD per 1M tokens, so `tokens x price` is already in
micro-dollars: 1,000 tokens at $0.15/Mtok cost 150 micro-dollars. Fractions of a
micro-dollar round up, so a charge never exceeds the reservation made for at
least as many tokens.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

MICROS_PER_USD = 1_000_000


def cost_micros(
    *,
    input_tokens: int,
    output_tokens: int,
    input_price: Decimal,
    output_price: Decimal,
    cached_tokens: int = 0,
    cached_price: Decimal | None = None,
    multiple: Decimal = Decimal(1),
) -> int:
    """The cost of a call in micro-dollars, rounded up. `cached_tokens` of the
    input (the provider's prompt cache served them) cost `cached_price` each;
    `multiple` scales every price (a service tier's: 2 for twice the catalog's),
    before the one rounding."""
    cached = min(max(cached_tokens, 0), input_tokens) if cached_price is not None else 0
    total = (
        Decimal(input_tokens - cached) * input_price
        + Decimal(cached) * (cached_price or Decimal(0))
        + Decimal(output_tokens) * output_price
    ) * multiple
    return int(total.to_integral_value(rounding=ROUND_CEILING))


def usd(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD


def usd_string(micros: int | None) -> str | None:
    """Micro-dollars as a decimal string of USD with all six places ("0.000150"),
    as the APIs show a cost; None stays None."""
    return None if micros is None else f"{usd(micros):.6f}"


def format_usd(micros: int) -> str:
    """`$1.234567` trimmed to cents when exact: `$5.00`, `$0.000150`."""
    value = usd(micros)
    if value == value.quantize(Decimal("0.01")):
        return f"${value:.2f}"
    return f"${value.normalize():f}"


def micros_from_usd(value: Decimal | str | int) -> int:
    """Exact conversion of a dollar amount; refuses sub-micro-dollar precision."""
    amount = Decimal(value) * MICROS_PER_USD
    if amount != amount.to_integral_value():
        raise ValueError(f"{value} USD is not a whole number of micro-dollars")
    return int(amount)
