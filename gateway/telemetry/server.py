"""The gRPC server's spans: one SERVER span per call, named by its method, continuing
the caller's W3C ``traceparent`` (and ``baggage``) when its metadata carries one.

In place of OpenTelemetry's aio server interceptor (``opentelemetry-instrumentation-grpc``),
which for every call built a new method handler, parsed the peer's address and the
whole metadata into span attributes and wrapped the servicer context in a proxy: here
each method's handler is wrapped once and a call costs the span itself. Spans carry
the same RPC attributes (``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``) and end when the call ends, streams included (cancelled
ones too). The status of a refused call is set by the gateway's interceptor
(`gateway.telemetry.spans.mark_status`), which sees every error it maps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AnyValue

#: The metadata keys a caller's trace context comes in (W3C Trace Context and Baggage).
_CONTEXT_KEYS = frozenset({"traceparent", "tracestate", "baggage"})


def _remote_context(metadata: Any) -> Context | None:
    """The caller's context, if its metadata carries one (most calls: None, no parsing)."""
    if not metadata:
        return None
    carrier = {item.key: item.value for item in metadata if item.key in _CONTEXT_KEYS}
    return propagate.extract(carrier) if carrier else None


def _traced(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, tracer: trace.Tracer
) -> grpc.RpcMethodHandler[Any, Any]:
    service, _, name = method.lstrip("/").partition("/")
    attributes: dict[str, AnyValue] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": name,
        "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
    }

    def start(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[trace.Span, object]:
        """The call's span, made current (in the caller's context, if it sent one)."""
        parent = _remote_context(context.invocation_metadata())
        span = tracer.start_span(
            method,
            parent,
            SpanKind.SERVER,
            attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def failed(span: trace.Span, error: Exception) -> None:
        if type(error) is not Exception:  # a bare Exception is how grpc aborts
            span.record_exception(error)

    def end(span: trace.Span, token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    if handler.unary_unary is not None:
        unary: Callable[..., Awaitable[Any]] = handler.unary_unary

        async def unary_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            span, token = start(context)
            try:
                return await unary(request, context)
            except Exception as error:
                failed(span, error)
                raise
            finally:
                end(span, token)

        return grpc.unary_unary_rpc_method_handler(
            unary_call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        streaming: Callable[..., AsyncIterator[Any]] = handler.unary_stream  # type: ignore[assignment]

        async def stream_call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            span, token = start(context)
            try:
                async for response in streaming(request, context):
                    yield response
            except Exception as error:
                failed(span, error)
                raise
            finally:
                end(span, token)

        return grpc.unary_stream_rpc_method_handler(
            stream_call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # the contract has no client-streaming method: served untraced


class ServerSpans:
    """The server spans of a process that traces (`tracing_on`): the gateway's
    interceptor wraps each method's handler with `traced` once, outermost, so a call
    costs the span and no interceptor more (a second one cost a continuation and two
    coroutines a call, about a fifth of what tracing added to the case view's CPU)."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("gateway.api")

    def traced(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` with a SERVER span around each call of ``method``."""
        return _traced(handler, method, self._tracer)
