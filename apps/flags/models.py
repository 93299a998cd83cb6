from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from apps.accounts.models import Tier


class BucketBy(models.TextChoices):
    USER = "user", "User (each user sticks to a cohort)"
    TENANT = "tenant", "Tenant (a whole tenant moves together)"


class Flag(models.Model):
    """A model rollout: requests for `model` go to `rollout_model` for the users
    the flag is on for. In the public schema a platform flag (operators); in a
    tenant's schema that tenant's flag, which overrides a platform flag with the
    same key."""

    key = models.SlugField(max_length=64, unique=True)
    description = models.CharField(max_length=500, blank=True)
    enabled = models.BooleanField(default=False, help_text="Off: nobody gets the rollout model.")
    rollout_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))],
        help_text="Share of users (or tenants) the flag is on for; a user in stays in as it grows.",
    )
    model = models.CharField(max_length=64, help_text="Requests for this model are subject to it (the off variant).")
    rollout_model = models.CharField(max_length=64, help_text="The model used where the flag is on (the on variant).")
    bucket_by = models.CharField(max_length=8, choices=BucketBy.choices, default=BucketBy.USER)
    allow_users = models.JSONField(default=list, blank=True, help_text="E-mails always on (when enabled).")
    deny_users = models.JSONField(default=list, blank=True, help_text="E-mails always off.")
    allow_tenants = models.JSONField(default=list, blank=True, help_text="Tenant schemas always on (when enabled).")
    deny_tenants = models.JSONField(default=list, blank=True, help_text="Tenant schemas always off.")
    tier = models.CharField(max_length=16, choices=Tier.choices, blank=True, help_text="Only users of this tier.")
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("key",)

    def __str__(self) -> str:
        state = f"{self.rollout_percent}%" if self.enabled else "off"
        return f"{self.key} ({self.model} -> {self.rollout_model}: {state})"


class FlagChange(models.Model):
    """One change to a flag, as the admin made it: who, when, and the fields
    before and after (append-only; shown on the flag's page)."""

    flag = models.ForeignKey(Flag, on_delete=models.SET_NULL, null=True, related_name="changes")
    flag_key = models.CharField(max_length=64)
    actor = models.CharField(max_length=150)
    at = models.DateTimeField(auto_now_add=True)
    old = models.JSONField(null=True, blank=True, help_text="null: created")
    new = models.JSONField(null=True, blank=True, help_text="null: deleted")

    class Meta:
        ordering = ("-at",)

    def __str__(self) -> str:
        return f"{self.flag_key} by {self.actor} at {self.at:%Y-%m-%d %H:%M:%S}"


AUDITED_FIELDS = (
    "description",
    "enabled",
    "rollout_percent",
    "model",
    "rollout_model",
    "bucket_by",
    "allow_users",
    "deny_users",
    "allow_tenants",
    "deny_tenants",
    "tier",
    "starts_at",
    "ends_at",
)


def flag_snapshot(flag: Flag) -> dict[str, object]:
    """The audited fields as JSON-ready values."""
    values: dict[str, object] = {}
    for name in AUDITED_FIELDS:
        value = getattr(flag, name)
        if isinstance(value, Decimal):
            value = str(value)
        elif hasattr(value, "isoformat"):
            value = value.isoformat()
        values[name] = value
    return values
