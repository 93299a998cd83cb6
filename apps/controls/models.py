from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
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


class SwitchLevel(models.TextChoices):
    GLOBAL = "global", "Global (all AI)"
    TENANT = "tenant", "Tenant"
    USER = "user", "User"
    MODEL = "model", "Model"


class KillSwitch(models.Model):
    """AI switched off for everything, a tenant, a user or a model. Checked at
    admission and again by the worker before the call. `automatic` switches were
    flipped by a hard budget limit and are cleared when that period resets."""

    level = models.CharField(max_length=8, choices=SwitchLevel.choices)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    # A user lives in its tenant's schema: referenced by id (and email, for people).
    user_id = models.PositiveIntegerField(null=True, blank=True)
    user_email = models.EmailField(blank=True)
    model = models.CharField(max_length=64, blank=True, help_text="Catalog slug, for a model switch.")
    active = models.BooleanField(default=True, help_text="On: AI is off for this scope.")
    automatic = models.BooleanField(default=False, editable=False)
    period = models.CharField(max_length=16, blank=True, editable=False, help_text="The budget period that flipped it.")
    reason = models.TextField()
    updated_by = models.CharField(max_length=150, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["level", "tenant", "user_id", "model"], nulls_distinct=False, name="one_switch_per_scope"
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(level="global", tenant__isnull=True, user_id__isnull=True, model="")
                    | models.Q(level="tenant", tenant__isnull=False, user_id__isnull=True, model="")
                    | models.Q(level="user", tenant__isnull=False, user_id__isnull=False, model="")
                    | (models.Q(level="model", tenant__isnull=True, user_id__isnull=True) & ~models.Q(model=""))
                ),
                name="switch_scope_matches_level",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.describe()} ({'on' if self.active else 'off'})"

    def describe(self) -> str:
        if self.level == SwitchLevel.GLOBAL:
            return "all AI"
        if self.level == SwitchLevel.TENANT:
            return f"tenant {self.tenant.schema_name if self.tenant else '?'}"
        if self.level == SwitchLevel.USER:
            return f"user {self.user_email or self.user_id}"
        return f"model {self.model}"


class KillSwitchEvent(models.Model):
    """The audit trail: every flip, who did it, when and why."""

    switch = models.ForeignKey(KillSwitch, on_delete=models.CASCADE, related_name="events")
    active = models.BooleanField()
    actor = models.CharField(max_length=150)
    reason = models.TextField()
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.actor} turned {'on' if self.active else 'off'} {self.switch.describe()}"


class RateLimit(models.Model):
    """Tokens (and optionally requests) per minute for every user of a tier (the
    default), or for a whole tenant. The token burst (bucket capacity) defaults
    to one minute's worth."""

    tier = models.CharField(max_length=16, choices=Tier.choices, blank=True, help_text="A tier's per-user default.")
    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.CASCADE, null=True, blank=True, related_name="+", help_text="Or a tenant."
    )
    tokens_per_minute = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    burst_tokens = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Also limit requests; blank: no."
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(tenant__isnull=True) & ~models.Q(tier=""))
                | (models.Q(tenant__isnull=False) & models.Q(tier="")),
                name="rate_limit_for_a_tier_or_a_tenant",
            ),
            models.UniqueConstraint(fields=["tier", "tenant"], nulls_distinct=False, name="one_rate_limit_per_scope"),
        ]

    def __str__(self) -> str:
        return f"{self.tier or self.tenant}: {self.tokens_per_minute} tokens/min"


class EmbedderBackend(models.TextChoices):
    API = "api", "OpenAI-compatible API"
    LOCAL = "local", "Local CPU (all-MiniLM-L6-v2)"


class CacheScope(models.TextChoices):
    """Who shares a cached answer: everyone in the tenant (the default), or only
    the user who asked (then no user can learn what a colleague asked, not even
    with `cache.mode: "only"`)."""

    TENANT = "tenant", "The organisation (its users share answers)"
    USER = "user", "Each user (answers never cross users)"


class CachePolicy(models.Model):
    """How a tenant's answers are cached (absent: deterministic requests only, for
    CACHE_DEFAULT_TTL_SECONDS). Requests may still choose per call (`cache.mode`)."""

    tenant = models.OneToOneField("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    exact_ttl_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[MinValueValidator(1), MaxValueValidator(30 * 24 * 3600)],
        help_text="How long an exact-match answer is kept, unless the request sets cache.ttl.",
    )
    cache_all_requests = models.BooleanField(
        default=False,
        help_text="Cache every request, not only deterministic ones (temperature 0 or top_p 0).",
    )
    scope = models.CharField(
        max_length=8,
        choices=CacheScope.choices,
        default=CacheScope.TENANT,
        help_text="Who shares cached answers (exact and semantic): the whole organisation, or each user alone.",
    )
    exact_max_entries = models.PositiveIntegerField(
        default=10_000,
        validators=[MinValueValidator(1)],
        help_text="Most exact-match answers kept for the organisation; the oldest go first.",
    )
    # Semantic cache: answers reused for paraphrases, within the same conversation
    # context, found by embedding similarity in the tenant's own schema.
    semantic_enabled = models.BooleanField(
        default=False, help_text="Answer paraphrases of earlier requests from the semantic cache."
    )
    semantic_threshold = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.5), MaxValueValidator(1.0)],
        help_text="Cosine similarity at or above which a cached answer is reused"
        " (blank: the embedder's measured default, 0.95 for an API embedder).",
    )
    semantic_ttl_seconds = models.PositiveIntegerField(
        default=7 * 24 * 3600, validators=[MinValueValidator(60)], help_text="How long a semantic entry is kept."
    )
    semantic_max_entries = models.PositiveIntegerField(
        default=10_000,
        validators=[MinValueValidator(1)],
        help_text="Most entries kept; the least recently hit go first.",
    )
    embedder_backend = models.CharField(
        max_length=16,
        choices=EmbedderBackend.choices,
        default=EmbedderBackend.API,
        help_text="Local: all-MiniLM-L6-v2 on the workers' CPU (384 dimensions; needs requirements/local.txt).",
    )
    embedder_base_url = models.URLField(
        max_length=500,
        blank=True,
        help_text="OpenAI-compatible API root serving /embeddings (OpenAI, vLLM, Ollama, TEI).",
    )
    embedder_model = models.CharField(max_length=200, blank=True)
    embedder_api_key_env = models.CharField(
        max_length=100,
        blank=True,
        validators=[RegexValidator(r"^[A-Z_][A-Z0-9_]*$", "An environment variable name.")],
        help_text="Environment variable that holds the embedder's API key (blank: no key).",
    )
    embedder_dimensions = models.PositiveSmallIntegerField(
        choices=[(384, "384"), (768, "768"), (1024, "1024"), (1536, "1536")],
        default=384,
        help_text="Vector size (sent as `dimensions` to models that accept it; others must produce this size).",
    )

    class Meta:
        verbose_name_plural = "cache policies"

    def __str__(self) -> str:
        semantic = f", semantic >= {self.semantic_threshold}" if self.semantic_enabled else ""
        everything = " (all requests)" if self.cache_all_requests else ""
        return f"{self.tenant}: exact {self.exact_ttl_seconds}s{everything}{semantic}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.embedder_backend == EmbedderBackend.LOCAL:
            from apps.cache.local_embedder import available

            if not available():
                raise ValidationError(
                    {"embedder_backend": "The local embedder is not installed here (requirements/local.txt)."}
                )
            if self.embedder_dimensions != 384:
                raise ValidationError({"embedder_dimensions": "The local embedder makes 384-dimension vectors."})
        elif self.semantic_enabled and not (self.embedder_base_url and self.embedder_model):
            raise ValidationError("The semantic cache needs an embedder: its base URL and model.")


class FallbackPolicy(models.Model):
    """Where a job goes when its model fails: an ordered chain of models tried after
    the requested one, then optionally the tenant's semantic cache. Per tier (the
    default for its users) or per tenant (overrides the tiers). Requests may name
    their own `fallbacks`, within these models."""

    tier = models.CharField(max_length=16, choices=Tier.choices, blank=True, help_text="A tier's default.")
    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.CASCADE, null=True, blank=True, related_name="+", help_text="Or a tenant."
    )
    chain = models.JSONField(default=list, help_text='Model slugs in order, e.g. ["premium-large", "local-small"].')
    semantic_cache_last = models.BooleanField(
        default=False, help_text="When every model failed, answer with the closest semantic-cache entry."
    )

    class Meta:
        verbose_name_plural = "fallback policies"
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(tenant__isnull=True) & ~models.Q(tier=""))
                | (models.Q(tenant__isnull=False) & models.Q(tier="")),
                name="fallback_policy_for_a_tier_or_a_tenant",
            ),
            models.UniqueConstraint(
                fields=["tier", "tenant"], nulls_distinct=False, name="one_fallback_policy_per_scope"
            ),
        ]

    def __str__(self) -> str:
        steps = " -> ".join([*self.chain, *(["semantic cache"] if self.semantic_cache_last else [])])
        return f"{self.tier or self.tenant}: {steps}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from apps.catalog.models import LLMModel

        if not isinstance(self.chain, list) or not all(isinstance(m, str) for m in self.chain):
            raise ValidationError({"chain": "A list of model slugs."})
        unknown = sorted(set(self.chain) - set(LLMModel.objects.values_list("slug", flat=True)))
        if unknown:
            raise ValidationError({"chain": f"Not in the catalog: {', '.join(unknown)}."})
