from typing import Any, NoReturn

from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.controls.models import BudgetFields


class LedgerKind(models.TextChoices):
    CHARGE = "charge", "Charge"  # a provider call, at its actual usage
    CACHED = "cached", "Cached"  # an answer served from cache: cost 0, saved_micros what it would have cost
    REFUND = "refund", "Refund"  # gives a charge back (a failed call)
    ADJUSTMENT = "adjustment", "Adjustment"  # an operator's correction


class AppendOnly(Exception):
    """The ledger is append-only: entries are never changed or removed."""


class LedgerQuerySet(models.QuerySet["LedgerEntry"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnly("Ledger entries cannot be updated; append an adjustment instead.")

    def delete(self) -> NoReturn:
        raise AppendOnly("Ledger entries cannot be deleted; append an adjustment instead.")


class LedgerEntry(models.Model):
    """One priced event, in the tenant's schema. Amounts are integer micro-dollars;
    refunds are negative. A job attempt that reached a provider has exactly one
    charge (and at most one refund): enforced by unique constraints, so a
    redelivered task cannot write a second one."""

    user = models.ForeignKey("accounts.User", on_delete=models.PROTECT, related_name="ledger_entries")
    # The job the entry is for, as a plain reference: no database constraint and
    # nothing cascades, so a charge never depends on the job row (a job deleted
    # while it ran is still charged) and deleting a job leaves its entries.
    job = models.ForeignKey(
        "jobs.Job",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="ledger_entries",
    )
    attempt = models.PositiveSmallIntegerField(default=0, help_text="The job's claim number the entry is for.")
    call = models.PositiveSmallIntegerField(
        default=0, help_text="Which step of the job's fallback chain made the call (0: the requested model)."
    )
    model = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=LedgerKind.choices)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_micros = models.BigIntegerField(help_text="Micro-dollars; negative for a refund.")
    saved_micros = models.BigIntegerField(default=0, help_text="For cached answers: what the call would have cost.")
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = LedgerQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job", "attempt", "call", "kind"],
                condition=Q(kind__in=["charge", "refund"]),
                name="one_charge_and_refund_per_call",
            )
        ]
        indexes = [models.Index(fields=["user", "created_at"])]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.cost_micros}µ$ {self.model}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise AppendOnly("Ledger entries cannot be updated; append an adjustment instead.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnly("Ledger entries cannot be deleted; append an adjustment instead.")


class UserBudget(BudgetFields):
    """A user's own budget for a period; without one, the tier's default applies."""

    user = models.ForeignKey("accounts.User", on_delete=models.CASCADE, related_name="budgets")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "period"], name="one_user_budget_per_period")]

    def __str__(self) -> str:
        return f"{self.user} {self.period} ${self.limit_usd}"
