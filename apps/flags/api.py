from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .rollout import Subject
from .selectors import flags_evaluate


class FlagListApi(APIView):
    """`GET /api/v1/flags`: the flags that concern the calling user (on for them, or
    deciding their requests), as evaluated for them; a tenant admin key sees every
    flag that concerns the tenant. Never a flag's user or tenant lists."""

    @extend_schema(summary="The flags as they apply to you")
    def get(self, request: Request) -> Response:
        principal: Any = request.user
        subject = Subject(principal.tenant_schema, principal.user_id, principal.email, principal.tier)
        flags = flags_evaluate(subject, tenant_view=principal.is_admin)
        data = [
            {
                "key": item.rule.key,
                "scope": item.rule.scope,
                "on": item.on,
                "model": item.rule.model,
                "rollout_model": item.rule.rollout_model,
                "routes_to": item.model,
            }
            for item in flags
        ]
        return Response({"object": "list", "data": data})
