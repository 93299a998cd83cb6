from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from apps.accounts.models import Tier


class Period(models.TextChoices):
    """Budget periods, in UTC: a day starts at 00:00, a month on the 1st."""

    DAY = "day", "Day"
    MONTH = "month", "Month"


class BudgetFields(models.Model):
    """A hard limit per period, with a soft threshold that alerts."""

    period = models.CharField(max_length=8, choices=Period.choices)
    limit_usd = models.DecimalField(
        max_digits=14, decimal_places=6, validators=[MinValueValidator(Decimal("0"))], help_text="Hard limit, USD."
    )
    soft_percent = models.PositiveSmallIntegerField(
        default=80,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Alert once per period when spend crosses this share of the limit.",
    )

    class Meta:
        abstract = True


class TenantBudget(BudgetFields):
    """What a whole tenant may spend per period; set by the operator."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="budgets")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "period"], name="one_tenant_budget_per_period")]

    def __str__(self) -> str:
        return f"{self.tenant} {self.period} ${self.limit_usd}"


class TierBudget(BudgetFields):
    """The default budget of a user of a tier who has no budget of their own."""

    tier = models.CharField(max_length=16, choices=Tier.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tier", "period"], name="one_tier_budget_per_period")]

    def __str__(self) -> str:
        return f"{self.tier} {self.period} ${self.limit_usd}"


class SpendRollup(models.Model):
    """Spend per tenant, UTC day and model, kept in the same transaction as each
    ledger entry (an upsert), so operators see spend across tenants without
    visiting every schema."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    model = models.CharField(max_length=64)
    requests = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)
    saved_micros = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "day", "model"], name="one_rollup_per_tenant_day_model")
        ]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.day} {self.model}"
