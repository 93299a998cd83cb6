"""Two admin sites: the platform operator's (public schema, served on the public
domain) and each tenant's (served on `<tenant>.<public domain>`). Models register
on the site of the schema their tables live in."""

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path


class OperatorAdminSite(AdminSite):
    site_header = "AI Platform: operator"
    site_title = "AI Platform operator"
    index_title = "Tenants, domains and the model catalog (daily spend chart: /admin/spend/)"

    def get_urls(self) -> list[Any]:
        return [path("spend/", self.admin_view(self.spend_view), name="spend"), *super().get_urls()]

    def spend_view(self, request: HttpRequest) -> HttpResponse:
        from apps.controls.charts import spend_chart

        context = {**self.each_context(request), "chart": spend_chart(), "title": "Spend"}
        return TemplateResponse(request, "admin/controls/spend.html", context)


class TenantAdminSite(AdminSite):
    site_header = "AI Platform: tenant admin"
    site_title = "AI Platform tenant"
    index_title = "Users, API keys and jobs"


operator_site = OperatorAdminSite(name="operator_admin")
tenant_site = TenantAdminSite(name="tenant_admin")
