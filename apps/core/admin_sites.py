"""Two admin sites: the platform operator's (public schema, served on the public
domain) and each tenant's (served on `<tenant>.<public domain>`). Models register
on the site of the schema their tables live in."""

from django.contrib.admin import AdminSite


class OperatorAdminSite(AdminSite):
    site_header = "AI Platform: operator"
    site_title = "AI Platform operator"
    index_title = "Tenants, domains and the model catalog"


class TenantAdminSite(AdminSite):
    site_header = "AI Platform: tenant admin"
    site_title = "AI Platform tenant"
    index_title = "Users, API keys and jobs"


operator_site = OperatorAdminSite(name="operator_admin")
tenant_site = TenantAdminSite(name="tenant_admin")
