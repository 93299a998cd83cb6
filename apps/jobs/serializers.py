"""Request validation for the job API. Errors name the field (`messages.0.role`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from rest_framework import serializers

from .services import JobRequest

# Passed through to the provider as they are.
SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "stop")
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 2048
MAX_STOP_SEQUENCES = 4
MAX_METADATA_KEYS = 16
MAX_METADATA_VALUE_LENGTH = 512


class StrictSerializer(serializers.Serializer[Any]):
    """Rejects fields it does not know: a typo like `max_token` is an error, not a
    silently ignored parameter."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        unknown[0]: serializers.ErrorDetail(
                            f"Unknown parameter '{unknown[0]}'.", code="unknown_parameter"
                        )
                    }
                )
        return super().to_internal_value(data)


class ContentField(serializers.Field[Any, Any, Any, Any]):
    """A message's content: a string, or a list of parts like {"type": "text", "text": "..."}."""

    default_error_messages = {
        "invalid": "Must be a string or a list of content parts.",
        "invalid_part": 'Each content part must be an object like {{"type": "text", "text": "..."}}.',
    }

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and data:
            for part in data:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    self.fail("invalid_part")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    self.fail("invalid_part")
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class MessageSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = ContentField()
    name = serializers.CharField(required=False, max_length=64)
    tool_call_id = serializers.CharField(required=False, max_length=128)


class StopField(serializers.Field[Any, Any, Any, Any]):
    default_error_messages = {"invalid": f"Must be a string or a list of at most {MAX_STOP_SEQUENCES} strings."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and data:
            return data
        if (
            isinstance(data, list)
            and 0 < len(data) <= MAX_STOP_SEQUENCES
            and all(isinstance(item, str) and item for item in data)
        ):
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class MetadataField(serializers.DictField):
    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if len(value) > MAX_METADATA_KEYS:
            raise serializers.ValidationError(f"At most {MAX_METADATA_KEYS} keys.", code="invalid")
        for key, item in value.items():
            if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_LENGTH or len(key) > 64:
                raise serializers.ValidationError(
                    f"Keys up to 64 characters, values strings up to {MAX_METADATA_VALUE_LENGTH}.", code="invalid"
                )
        return value


class WebhookSerializer(StrictSerializer):
    url = serializers.URLField(max_length=2000)

    def validate_url(self, value: str) -> str:
        try:
            urlsplit(value).port  # noqa: B018 - raises on a port outside 0-65535
        except ValueError:
            raise serializers.ValidationError("The port must be a number from 1 to 65535.", code="invalid") from None
        return value


class CacheOptionSerializer(StrictSerializer):
    mode = serializers.ChoiceField(choices=["use", "refresh", "bypass", "only"], required=False, default="use")
    ttl = serializers.IntegerField(required=False, min_value=1, max_value=30 * 24 * 3600)
    semantic = serializers.BooleanField(required=False)


class JobCreateSerializer(StrictSerializer):
    model = serializers.CharField(max_length=64)
    messages = MessageSerializer(many=True, allow_empty=False, max_length=MAX_MESSAGES)  # type: ignore[call-arg]
    max_tokens = serializers.IntegerField(required=False, min_value=1)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    stop = StopField(required=False)
    metadata = MetadataField(required=False)
    stream = serializers.BooleanField(required=False, default=False)
    webhook = WebhookSerializer(required=False)
    cache = CacheOptionSerializer(required=False)
    fallbacks = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=8, allow_empty=True
    )

    def job_request(self, *, stream: bool | None = None) -> JobRequest:
        """The validated submission as the job service takes it (`stream` overrides
        the body's, for the /v1 API, which reads it before validation)."""
        data = self.validated_data
        return JobRequest(
            model=data["model"],
            messages=data["messages"],
            params={name: data[name] for name in SAMPLING_PARAMS if name in data},
            metadata=data.get("metadata", {}),
            stream=data["stream"] if stream is None else stream,
            webhook_url=data.get("webhook", {}).get("url", ""),
            cache=dict(data["cache"]) if "cache" in data else None,
            fallbacks=list(data["fallbacks"]) if "fallbacks" in data else None,
        )
