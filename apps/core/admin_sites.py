"""Two admin sites: the platform operator's (public schema, served on the public
domain) and each tenant's (served on `<tenant>.<public domain>`). Models register
on the site of the schema their tables live in; a page that is not a model's (the
operator's spend chart) registers with `page_register` from its app's admin.py,
so this bottom layer names no app."""

from collections.abc import Callable
from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse
from django.urls import path

AdminPage = Callable[[HttpRequest], HttpResponse]


class OperatorAdminSite(AdminSite):
    site_header = "AI Platform: operator"
    site_title = "AI Platform operator"
    index_title = "Tenants, domains and the model catalog (daily spend chart: /admin/spend/)"

    def __init__(self, name: str = "admin") -> None:
        super().__init__(name)
        self._pages: list[tuple[str, AdminPage, str]] = []

    def page_register(self, route: str, view: AdminPage, *, name: str) -> None:
        """Serve `view` at `route` under this site, behind its staff login. Called
        when the admin modules load, before the site's URLs are first built."""
        self._pages.append((route, view, name))

    def get_urls(self) -> list[Any]:
        pages = [path(route, self.admin_view(view), name=name) for route, view, name in self._pages]
        return [*pages, *super().get_urls()]


class TenantAdminSite(AdminSite):
    site_header = "AI Platform: tenant admin"
    site_title = "AI Platform tenant"
    index_title = "Users, API keys and jobs"


operator_site = OperatorAdminSite(name="operator_admin")
tenant_site = TenantAdminSite(name="tenant_admin")
