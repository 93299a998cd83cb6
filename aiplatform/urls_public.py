from django.urls import path

from aiplatform.metrics import metrics
from apps.core.admin_sites import operator_site

from .urls_common import urlpatterns as common

handler404 = "apps.core.views.not_found"
handler500 = "apps.core.views.server_error"

# Served on PUBLIC_DOMAIN only (apps/tenants/middleware.py). /metrics names every
# tenant: loopback clients or METRICS_TOKEN (aiplatform/metrics.py), never on a tenant's host.
urlpatterns = [path("admin/", operator_site.urls), path("metrics", metrics, name="metrics"), *common]
