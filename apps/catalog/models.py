from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

# Slugs become queue names (`llm.<slug>`) and appear in URLs: keep them plain.
SLUG_VALIDATOR = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{0,63}$", "Lowercase letters, digits, '.', '_' and '-', starting with a letter or digit."
)


class Provider(models.TextChoices):
    """Which kind of server speaks the OpenAI API at base_url (traces name it)."""

    OPENAI = "openai", "OpenAI"
    VLLM = "vllm", "vLLM"
    OLLAMA = "ollama", "Ollama"
    LLAMA_CPP = "llama.cpp", "llama.cpp server"
    OTHER = "other", "Other OpenAI-compatible"


# What a request's content parts may carry, by the part types that carry them.
MODALITIES = ("text", "image", "audio", "file")
# Providers that are servers of one's own: a remote URL in a request would be
# fetched from inside the operator's network.
SELF_HOSTED_PROVIDERS = (Provider.VLLM, Provider.OLLAMA, Provider.LLAMA_CPP)
# Provider extras (vLLM, llama.cpp) a model's catalog entry may allow requests to send.
PROVIDER_EXTRAS = ("top_k", "min_p", "repetition_penalty", "chat_template_kwargs")
# OpenAI's largest n.
MAX_N = 128
# The service tiers OpenAI's API names; "auto" and "default" are every model's.
SERVICE_TIERS = ("auto", "default", "flex", "priority", "scale", "fast")
# OpenAI's largest image (high detail: 8 tiles of 170 tokens, plus 85) for gpt-4o.
DEFAULT_MAX_TOKENS_PER_PART = 1445


def _positive_decimal(value: object) -> bool:
    from decimal import InvalidOperation

    try:
        return isinstance(value, str) and Decimal(value).is_finite() and Decimal(value) > 0
    except InvalidOperation:
        return False


def text_only() -> list[str]:
    return ["text"]


class LLMModel(models.Model):
    """A model the platform can call, in the public schema (operators edit it)."""

    slug = models.CharField(max_length=64, unique=True, validators=[SLUG_VALIDATOR])
    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.OPENAI)
    # The model name the provider expects, when it differs from our slug.
    upstream_model = models.CharField(max_length=200, blank=True)
    base_url = models.URLField(max_length=500, help_text="OpenAI-compatible API root, e.g. https://api.openai.com/v1")
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        validators=[RegexValidator(r"^[A-Z_][A-Z0-9_]*$", "An environment variable name.")],
        help_text="Environment variable that holds the provider API key (blank: no key).",
    )
    tokenizer = models.CharField(
        max_length=16,
        choices=[("cl100k_base", "cl100k_base"), ("o200k_base", "o200k_base")],
        blank=True,
        help_text="tiktoken encoding for counting tokens; blank: tiktoken's own table for the provider's model name,"
        " else cl100k_base (an estimate for non-OpenAI tokenizers).",
    )
    context_window = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    max_output_tokens = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="The provider's TPM limit for this model (all tenants together); blank: none."
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="The provider's RPM limit for this model (all tenants together); blank: none."
    )
    input_price_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal("0"), help_text="USD per 1M input tokens"
    )
    output_price_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal("0"), help_text="USD per 1M output tokens"
    )
    # What the model can do with a request (checked at admission; a fallback step that
    # cannot is skipped).
    supports_chat = models.BooleanField(default=True, help_text="Serves /v1/chat/completions and jobs.")
    supports_embeddings = models.BooleanField(default=True, help_text="Serves /v1/embeddings.")
    embedding_token_input = models.BooleanField(
        default=False, help_text="Its embeddings take token ids as input (OpenAI's do; most servers' do not)."
    )
    supports_tools = models.BooleanField(default=True, help_text="Takes tools and tool_choice.")
    supports_json_schema = models.BooleanField(
        default=True, help_text='Takes response_format {"type": "json_schema"} (structured outputs).'
    )
    supports_reasoning = models.BooleanField(default=False, help_text="Takes reasoning_effort (a reasoning model).")
    supports_developer_role = models.BooleanField(
        default=True, help_text="Knows the developer role; else developer messages are sent as system messages."
    )
    extra_params = models.JSONField(
        default=list,
        blank=True,
        help_text='Provider extras requests may send (vLLM, llama.cpp): a list of "top_k", "min_p",'
        ' "repetition_penalty", "chat_template_kwargs".',
    )
    max_n = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_N)],
        help_text="The most choices (n) one request may ask of it (vLLM and OpenAI take n; llama.cpp and Ollama"
        " answer one). 1: a request with n above 1 is refused.",
    )
    allows_store = models.BooleanField(
        default=False,
        help_text="Forward store: true (the provider keeps the completion, in the account the platform calls"
        " with); else a request with store: true is refused.",
    )
    service_tiers = models.JSONField(
        default=dict,
        blank=True,
        help_text='The service tiers requests may ask for beyond "auto" and "default", each with its price as a'
        ' multiple of the catalog prices, e.g. {"flex": "0.5", "priority": "2"}. Empty: only auto and default.',
    )
    cached_input_price_per_mtok = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per 1M input tokens the provider served from its prompt cache; blank: the input price",
    )
    input_modalities = models.JSONField(
        default=text_only,
        help_text='What requests may send it: a list of "text", "image", "audio", "file" (parts of another kind are'
        " refused with a 400).",
    )
    max_tokens_per_part = models.PositiveIntegerField(
        default=DEFAULT_MAX_TOKENS_PER_PART,
        validators=[MinValueValidator(1)],
        help_text="The most input tokens one image, audio or file part may cost at this model: what admission holds"
        " for it (a data: image of known size is held at its share by OpenAI's tile formula).",
    )
    allow_remote_media = models.BooleanField(
        default=False,
        help_text="Let requests pass http(s) image URLs for the provider to fetch. Only for a provider on the internet"
        " (never vLLM, Ollama or llama.cpp: they would fetch from inside your network).",
    )
    job_timeout_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="A job's wall-clock deadline on this model, from its start: no call starts after it, and a"
        " running call is stopped at it (charged for what it used, the job failed `timeout`). Reasoning models"
        " think for minutes. Blank: JOB_DEADLINE_SECONDS; at most JOB_TIMEOUT_MAX_SECONDS.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("slug",)
        verbose_name = "model"

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        modalities = self.input_modalities
        if (
            not isinstance(modalities, list)
            or "text" not in modalities
            or any(item not in MODALITIES for item in modalities)
        ):
            raise ValidationError({"input_modalities": f"A list of {', '.join(MODALITIES)}, with text."})
        extras = self.extra_params
        if not isinstance(extras, list) or any(item not in PROVIDER_EXTRAS for item in extras):
            raise ValidationError({"extra_params": f"A list of some of {', '.join(PROVIDER_EXTRAS)}."})
        tiers = self.service_tiers
        if not isinstance(tiers, dict) or any(
            tier not in SERVICE_TIERS[2:] or not _positive_decimal(price) for tier, price in tiers.items()
        ):
            raise ValidationError(
                {
                    "service_tiers": f"An object of some of {', '.join(SERVICE_TIERS[2:])}, each with its price"
                    ' multiple as a decimal string, e.g. {"flex": "0.5"}.'
                }
            )
        if self.allow_remote_media and self.provider in SELF_HOSTED_PROVIDERS:
            raise ValidationError(
                {"allow_remote_media": "A self-hosted provider would fetch remote media from inside your network."}
            )

    @property
    def provider_model_name(self) -> str:
        return self.upstream_model or self.slug
