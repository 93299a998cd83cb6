"""Traces, metrics, logs and error reports: what operators see of the platform.

- `context`: the request's and the job's identity (request_id, job_id, tenant,
  user, model), bound once and carried by every log line, span and Sentry event.
- `logs`: JSON (production) or console (development) log lines with that context.
- `tracing`: the OpenTelemetry SDK, configured by the standard OTEL_* variables.
- `genai`: one span and one set of metrics per provider call (GenAI conventions).
- `metrics`: the Prometheus metrics each process records, multiprocess-safe.
- `sentry`: Sentry with tenant and job tags, prompts never sent.
- `celery`: the request id and the job's context carried into the worker.
"""
