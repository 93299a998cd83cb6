import base64
import secrets

from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Tenant(TenantMixin):
    """A customer of the platform. Its users, keys and jobs live in its own schema."""

    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Completion webhooks: the URL used when a job names none, and the secret that
    # signs every delivery (Standard Webhooks style).
    webhook_url = models.URLField(max_length=2000, blank=True)
    webhook_secret = models.CharField(max_length=100, default=new_webhook_secret)
    # Budget alerts (soft threshold, hard limit): an email and a webhook signed with
    # the same secret; either may be left empty.
    alert_email = models.EmailField(blank=True)
    alert_webhook_url = models.URLField(max_length=2000, blank=True)
    # When the rate limiter's Redis cannot be reached, LLM calls are refused (503)
    # unless the operator chose to let this tenant's through unlimited.
    ratelimit_fail_open = models.BooleanField(
        default=False, help_text="Admit LLM calls without rate limits while the limiter is unreachable."
    )

    auto_create_schema = True
    auto_drop_schema = False

    def __str__(self) -> str:
        return f"{self.name} ({self.schema_name})"


class Domain(DomainMixin):
    pass


class ApiKeyRoute(models.Model):
    """Maps an API key's public prefix to its tenant, in the public schema, so a
    request can be switched to the right schema before its key is looked up there.
    Holds nothing secret: the hash lives in the tenant's own `accounts.ApiKey`."""

    prefix = models.CharField(max_length=16, primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="key_routes")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.prefix} -> {self.tenant_id}"
