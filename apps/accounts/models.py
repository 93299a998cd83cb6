from django.db import models


class Tier(models.TextChoices):
    STANDARD = "standard", "Standard"
    PREMIUM = "premium", "Premium"


class User(models.Model):
    """A tenant's end user: whoever calls the API with a key. Not a Django login
    (admins are `auth.User` in each schema); spend, limits and jobs hang off this."""

    email = models.EmailField(unique=True)
    tier = models.CharField(max_length=16, choices=Tier.choices, default=Tier.STANDARD)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.email


class ApiKey(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    is_admin = models.BooleanField(
        default=False, help_text="A tenant admin key: reads the whole tenant's usage, not only its user's."
    )

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"aip_{self.prefix}_…"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
