from django.core.validators import MinValueValidator
from django.db import models


class UserRateLimit(models.Model):
    """A user's own tokens per minute (instead of their tier's default)."""

    user = models.OneToOneField("accounts.User", on_delete=models.CASCADE, related_name="rate_limit")
    tokens_per_minute = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    burst_tokens = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Also limit requests; blank: no."
    )

    def __str__(self) -> str:
        return f"{self.user}: {self.tokens_per_minute} tokens/min"
