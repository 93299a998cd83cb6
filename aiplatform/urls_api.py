"""URLs for a Host that is neither PUBLIC_DOMAIN nor a tenant's domain (and for API
paths without a tenant's key): the API, which works on any host name, and
/metrics, which answers there only with METRICS_TOKEN. Never the operator admin."""

from django.urls import path

from aiplatform.metrics import metrics

from .urls_common import urlpatterns as common

handler404 = "apps.core.views.not_found"
handler500 = "apps.core.views.server_error"

urlpatterns = [path("metrics", metrics, name="metrics"), *common]
