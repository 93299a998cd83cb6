"""`GET /v1/models` and `GET /v1/models/<id>`: the catalog as OpenAI lists it."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.catalog.selectors import ModelSpec, models_enabled
from apps.core.errors import NotFound


class ModelListApi(APIView):
    """`GET /v1/models`: the models this tenant may use."""

    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [_model(spec) for spec in models_enabled()]})


class ModelDetailApi(APIView):
    def get(self, request: Request, model_id: str) -> Response:
        spec = next((spec for spec in models_enabled() if spec.slug == model_id), None)
        if spec is None:
            raise NotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        return Response(_model(spec))


def _model(spec: ModelSpec) -> dict[str, Any]:
    """OpenAI's model object, and what the model serves and takes (`capabilities`:
    ours, beside OpenAI's fields; the SDK keeps it in `model_extra`)."""
    return {
        "id": spec.slug,
        "object": "model",
        "created": 0,
        "owned_by": "aiplatform",
        "capabilities": {
            "chat": spec.supports_chat,
            "embeddings": spec.supports_embeddings,
            "embedding_token_input": spec.embedding_token_input,
            "tools": spec.supports_tools,
            "json_schema": spec.supports_json_schema,
            "reasoning": spec.supports_reasoning,
            "developer_role": spec.supports_developer_role,
            "input_modalities": list(spec.input_modalities),
            "extra_params": list(spec.extra_params),
            "max_n": spec.max_n,
            "store": spec.allows_store,
            "service_tiers": ["auto", "default", *(tier for tier, _ in spec.service_tiers)],
            "context_window": spec.context_window,
            "max_output_tokens": spec.max_output_tokens,
        },
    }
