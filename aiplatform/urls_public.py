from django.urls import path

from apps.core.admin_sites import operator_site

from .urls_common import urlpatterns as common

handler404 = "apps.core.views.not_found"
handler500 = "apps.core.views.server_error"

urlpatterns = [path("admin/", operator_site.urls), *common]
