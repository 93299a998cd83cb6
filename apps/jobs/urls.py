from django.urls import path

from .api import JobCancelApi, JobDetailApi, JobListCreateApi

urlpatterns = [
    path("jobs", JobListCreateApi.as_view(), name="jobs"),
    path("jobs/<str:job_id>", JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/cancel", JobCancelApi.as_view(), name="job-cancel"),
]
