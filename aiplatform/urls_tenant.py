from django.urls import path

from apps.core.admin_sites import tenant_site

from .urls_common import urlpatterns as common

handler404 = "apps.core.views.not_found"
handler500 = "apps.core.views.server_error"

urlpatterns = [path("admin/", tenant_site.urls), *common]
