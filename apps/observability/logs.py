"""Log lines that carry the request's and the job's context.

`ContextFilter` (on the handler) copies `request_id`, `job_id`, `tenant`, `user`
and `model` from the bound context onto every record, with the trace and span
ids when a span is being recorded: a line from the web and one from the worker
for the same job share `job_id` and `trace_id`. `JsonFormatter` writes one JSON
object per line (production: LOG_FORMAT=json); `ConsoleFormatter` a readable
line with the same fields appended (development). Prompt and answer text are
never logged by the platform.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from .context import FIELDS, current

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    *FIELDS,
    "trace_id",
    "span_id",
}


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = current()
        for name in FIELDS:
            setattr(record, name, fields.get(name))
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        else:
            record.trace_id = record.span_id = None
        return True


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in (*FIELDS, "trace_id", "span_id"):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        line.update(_extra(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [(name, getattr(record, name, None)) for name in FIELDS]
        pairs = " ".join(f"{name}={value}" for name, value in [*fields, *_extra(record).items()] if value is not None)
        if not pairs:
            return text
        head, newline, rest = text.partition("\n")  # keep a traceback below the fields
        return f"{head} [{pairs}]{newline}{rest}"


def logging_config(*, fmt: str, level: str) -> dict[str, Any]:
    """The LOGGING setting: one console handler, in `fmt` ("json" or "console")."""
    formatter = "json" if fmt == "json" else "console"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "apps.observability.logs.ContextFilter"}},
        "formatters": {
            "json": {"()": "apps.observability.logs.JsonFormatter"},
            "console": {"()": "apps.observability.logs.ConsoleFormatter"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": formatter, "filters": ["context"]},
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django's default config adds its own console handler in DEBUG: one line is enough.
            "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "django.db.backends": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
            "httpx2": {"level": "WARNING"},
        },
    }
