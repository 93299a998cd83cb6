"""Request validation, one for both APIs: a Chat Completions request (every field
of OpenAI's, see chat_params.py and messages.py) and the job API's own options
(webhook, cache, fallbacks). Errors name the field (`messages.0.role`)."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from rest_framework import serializers
from rest_framework.fields import empty

from .chat_params import FORWARDED, NULLABLE, chat_checks, chat_fields
from .messages import MessageSerializer, StrictSerializer
from .submit import JobRequest

MAX_MESSAGES = 2048
MAX_STOP_SEQUENCES = 4
MAX_METADATA_KEYS = 16
MAX_METADATA_VALUE_LENGTH = 512


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
    null_means_absent = NULLABLE

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

    def known_names(self) -> frozenset[str]:
        return _KNOWN

    def get_fields(self) -> dict[str, Any]:
        """Only the fields the request sends (and those it must, or that have a
        default): building all of OpenAI's fields for every request, most of them
        absent, cost more than the rest of its validation. Without data (the
        OpenAPI schema) every field."""
        data = getattr(self, "initial_data", None)
        if not isinstance(data, dict):
            return {**super().get_fields(), **copy.deepcopy(_CHAT_FIELDS)}
        sent = {name for name, value in data.items() if not (value is None and name in NULLABLE)}
        fields = {
            name: copy.deepcopy(field)
            for name, field in self._declared_fields.items()
            if name in sent or field.required or field.default is not empty
        }
        fields.update({name: copy.deepcopy(_CHAT_FIELDS[name]) for name in sent & _CHAT_FIELDS.keys()})
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        chat_checks(attrs)
        return attrs

    def validate_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        count = 0
        for index, message in enumerate(messages):
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for position, part in enumerate(content):
                if part["type"] == "text":
                    continue
                count += 1
                if count > settings.CONTENT_MAX_PARTS:
                    raise serializers.ValidationError(
                        {
                            str(index): {
                                "content": {
                                    str(position): [
                                        serializers.ErrorDetail(
                                            f"At most {settings.CONTENT_MAX_PARTS} image, audio or file parts"
                                            " per request (CONTENT_MAX_PARTS).",
                                            code="too_many_content_parts",
                                        )
                                    ]
                                }
                            }
                        }
                    )
        return messages

    def job_request(self, *, stream: bool | None = None) -> JobRequest:
        """The validated submission as the job service takes it (`stream` overrides
        the body's, for the /v1 API, which reads it before validation)."""
        data = self.validated_data
        params = {name: _plain(data[name]) for name in FORWARDED if name in data}
        if params.get("n") == 1:
            del params["n"]  # the default: the same request (and cache key) as without it
        # The output allowance, whichever name it came under: admission holds it and
        # the provider adapter sends it under the name the provider takes.
        allowance = data.get("max_tokens", data.get("max_completion_tokens"))
        if allowance is not None:
            params = {"max_tokens": allowance, **params}
        return JobRequest(
            model=data["model"],
            messages=_plain(data["messages"]),
            params=params,
            metadata=data.get("metadata", {}),
            stream=data["stream"] if stream is None else stream,
            webhook_url=data.get("webhook", {}).get("url", ""),
            cache=dict(data["cache"]) if "cache" in data else None,
            fallbacks=list(data["fallbacks"]) if "fallbacks" in data else None,
        )


def _plain(value: Any) -> Any:
    """Validated data as plain JSON values (DRF's nested serializers give OrderedDicts)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# Built once: each request deep-copies the few it sends.
_CHAT_FIELDS = chat_fields()
_KNOWN = frozenset(JobCreateSerializer._declared_fields) | frozenset(_CHAT_FIELDS)
