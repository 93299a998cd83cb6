from django.urls import path

from .api import JobCancelApi, JobDetailApi, JobListCreateApi
from .sse import job_events

urlpatterns = [
    path("jobs", JobListCreateApi.as_view(), name="jobs"),
    path("jobs/<str:job_id>", JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/cancel", JobCancelApi.as_view(), name="job-cancel"),
    path("jobs/<str:job_id>/events", job_events, name="job-events"),
]
