"""URLs served on every schema: the API (whose views need a tenant key, and answer
401 without one) and its OpenAPI schema and docs."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.core.views import not_found

urlpatterns = [
    path("api/v1/", include("apps.jobs.urls")),
    path("api/v1/", include("apps.billing.urls")),
    path("api/v1/", include("apps.flags.urls")),
    path("v1/", include("apps.jobs.urls_openai")),
    path("api/schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="swagger-ui",
    ),
    # Unknown API paths answer in the API's JSON error shape, also with DEBUG on.
    re_path(r"^(api|v1)/", not_found),
]
