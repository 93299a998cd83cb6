"""The operator's spend chart: daily spend by model, a server-rendered SVG (no
script, no CDN)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from django.db.models import Sum
from django.utils import timezone

from apps.billing.money import format_usd

from .models import SpendRollup

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 900, 320, 70, 40, 20


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass(frozen=True)
class SpendChart:
    days: list[date]
    models: list[tuple[str, str]]  # (slug, color)
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (y, label)
    labels: list[tuple[float, str]]  # (x, day label)
    total_micros: int
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def total(self) -> str:
        return format_usd(self.total_micros)


def spend_chart(*, days: int = 30, today: date | None = None) -> SpendChart:
    """Stacked bars: one per UTC day, one segment per model, across all tenants."""
    today = today or timezone.now().date()
    first = today - timedelta(days=days - 1)
    rows = (
        SpendRollup.objects.filter(day__gte=first, day__lte=today)
        .values("day", "model")
        .annotate(cost=Sum("cost_micros"))
        .order_by("day", "model")
    )
    spend: dict[date, dict[str, int]] = {}
    for row in rows:
        spend.setdefault(row["day"], {})[row["model"]] = int(row["cost"] or 0)
    models = sorted({m for per_day in spend.values() for m in per_day})
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    day_list = [first + timedelta(days=i) for i in range(days)]
    top = max([sum(v.values()) for v in spend.values()] + [1])
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - TOP - BOTTOM
    slot = plot_w / days
    bars: list[Bar] = []
    for i, day in enumerate(day_list):
        y: float = TOP + plot_h
        for model in models:
            cost = spend.get(day, {}).get(model, 0)
            if cost <= 0:
                continue
            h = plot_h * cost / top
            y -= h
            bars.append(Bar(LEFT + i * slot + 1, y, max(slot - 2, 1), h, colors[model],
                            f"{day.isoformat()} {model}: {format_usd(cost)}"))  # fmt: skip
    ticks = [(TOP + plot_h * (1 - f), format_usd(int(top * f))) for f in (0, 0.25, 0.5, 0.75, 1)]
    labels = [(LEFT + i * slot + slot / 2, d.strftime("%m-%d")) for i, d in enumerate(day_list) if i % 5 == 0]
    total = sum(sum(v.values()) for v in spend.values())
    return SpendChart(day_list, [(m, colors[m]) for m in models], bars, ticks, labels, total)
