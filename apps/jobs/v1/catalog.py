"""`GET /v1/models` and `GET /v1/models/<id>`: the catalog as OpenAI lists it."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.catalog.selectors import models_enabled
from apps.core.errors import NotFound


class ModelListApi(APIView):
    """`GET /v1/models`: the models this tenant may use."""

    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [_model(spec.slug) for spec in models_enabled()]})


class ModelDetailApi(APIView):
    def get(self, request: Request, model_id: str) -> Response:
        if model_id not in {spec.slug for spec in models_enabled()}:
            raise NotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        return Response(_model(model_id))


def _model(slug: str) -> dict[str, Any]:
    return {"id": slug, "object": "model", "created": 0, "owned_by": "aiplatform"}
