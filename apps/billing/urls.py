from django.urls import path

from .api import UsageApi

urlpatterns = [path("usage", UsageApi.as_view(), name="usage")]
