from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.cache.stats import cache_stats
from apps.core.errors import InvalidRequest

from .money import format_usd
from .selectors import GROUPS, usage_summary


class UsageQuerySerializer(serializers.Serializer[Any]):
    group_by = serializers.ChoiceField(choices=sorted(GROUPS), default="day")
    since = serializers.DateField(required=False)


class UsageApi(APIView):
    """`GET /api/v1/usage?group_by=day|model|user&since=YYYY-MM-DD`: the caller's
    spend (a tenant admin key: the whole tenant's), from the ledger."""

    @extend_schema(
        parameters=[
            OpenApiParameter("group_by", str, enum=sorted(GROUPS), description="default day"),
            OpenApiParameter("since", str, description="YYYY-MM-DD, UTC; default 30 days ago"),
        ],
        summary="Spend from the ledger, grouped",
    )
    def get(self, request: Request) -> Response:
        principal: Any = request.user
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        group_by = query.validated_data["group_by"]
        if group_by == "user" and not principal.is_admin:
            raise InvalidRequest(
                "group_by=user needs a tenant admin key; a user key sees only its own usage.",
                code="admin_key_required",
                param="group_by",
                status_code=403,
            )
        since = query.validated_data.get("since") or (timezone.now() - timedelta(days=30)).date()
        rows = usage_summary(since=since, group_by=group_by, user_id=None if principal.is_admin else principal.user_id)
        total = sum(row["cost_micros"] for row in rows)
        body: dict[str, Any] = {
            "scope": "tenant" if principal.is_admin else "user",
            "group_by": group_by,
            "since": since.isoformat(),
            "data": rows,
            "total_cost_micros": total,
            "total_cost_usd": format_usd(total),
        }
        if principal.is_admin:  # the tenant's cache counters (hits, misses, lookup latency)
            body["cache"] = cache_stats(schema=principal.tenant_schema, since=since)
        return Response(body)
