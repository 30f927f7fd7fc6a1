"""Log lines that name the trace and span they were written in: readable by default, one
JSON object a line on request (``COOPGATE_LOG_FORMAT=json``). What the gateway logs are
ids, counts and outcomes, never a customer's identifier or case text (tests scan the
demo's lines for them)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Literal

from opentelemetry import trace

_TEXT = "%(asctime)s %(levelname)s %(name)s [trace=%(trace_id)s span=%(span_id)s] %(message)s"


class TraceContextFilter(logging.Filter):
    """Stamps each record with the current span's ids (empty when nothing is traced)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        else:
            record.trace_id = record.span_id = "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", "-"),
            "span_id": getattr(record, "span_id", "-"),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(
    fmt: Literal["text", "json"] = "text", level: int | str = logging.INFO
) -> logging.Handler:
    """The root logger's one handler (stderr), replacing any other; returns it."""
    handler = logging.StreamHandler()
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
