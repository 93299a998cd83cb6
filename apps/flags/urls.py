from django.urls import path

from .api import FlagListApi

urlpatterns = [path("flags", FlagListApi.as_view(), name="flag-list")]
