"""The gateway's one server interceptor: authenticate, authorize, then map errors.

grpc.aio interceptors cannot see the servicer context, so this one wraps each
handler's behaviour: it reads the caller from the verified client certificate
(``auth_context``), admits it by the method's rule in the authorization table
(``gateway.api.authorization``; deny by default), holds one of its partner's quota
slots for the call (``gateway.api.quota``), makes it available through
``gateway.core.caller``, checks the request against the contract's declared limits
(``gateway.api.limits``), and turns domain errors into a ``google.rpc.Status`` with
``ErrorInfo`` and, for bad input, ``BadRequest`` field violations. Any other
exception becomes INTERNAL with a reference id in the log and nothing else.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.api.authorization import RULES, UNDECLARED, Rule
from gateway.api.limits import checker
from gateway.api.quota import PartnerQuota, Slots
from gateway.core.caller import (
    Caller,
    Role,
    person_from_metadata,
    reset_caller,
    reset_deadline,
    set_caller,
    set_deadline,
)
from gateway.core.errors import (
    ERROR_DOMAIN,
    CoopgateError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from gateway.crypto.pki import identity_from_pem
from gateway.crypto.revocation import RevocationList
from gateway.telemetry import annotate, metrics_on
from gateway.telemetry.instruments import rpc_recorder
from gateway.telemetry.server import ServerSpans
from gateway.telemetry.spans import mark_status

log = logging.getLogger(__name__)

#: Infrastructure services any holder of a valid certificate may call.
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: The package of the contract's messages: their declared limits are checked.
_CONTRACT = "coopgate.v1."


@dataclass(slots=True, frozen=True)
class Encoded:
    """A response its method encoded already (a view kept and served many times): sent
    as these bytes instead of being encoded again. A unary method of a service behind
    `GatewayInterceptor` may return one in place of its message."""

    data: bytes


def _sending_encoded(
    serialize: Callable[[Any], bytes] | None,
) -> Callable[[Any], bytes] | None:
    if serialize is None:
        return None

    def serializer(response: Any) -> bytes:
        return response.data if type(response) is Encoded else serialize(response)

    return serializer


@dataclass(slots=True, frozen=True)
class _Undecodable:
    """What a request that does not decode becomes: the handler answers INVALID_ARGUMENT
    naming the message it expected (grpc would answer UNKNOWN with an internal class
    name)."""

    type_name: str


def _request_descriptor(deserialize: Callable[[bytes], Any] | None) -> Any:
    """The descriptor of the message ``deserialize`` decodes (a generated class's
    ``FromString``), or None."""
    return getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)


def _changes_something(handler: grpc.RpcMethodHandler[Any, Any]) -> bool:
    """Every method of the contract that changes something takes an idempotency key."""
    descriptor = _request_descriptor(handler.request_deserializer)
    return descriptor is not None and "idempotency_key" in descriptor.fields_by_name


def _decoding(
    deserialize: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    descriptor = _request_descriptor(deserialize)
    undecodable = _Undecodable(descriptor.full_name if descriptor is not None else "request")

    def deserializer(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return undecodable

    return deserializer


def _decoded(request: Any) -> None:
    if type(request) is _Undecodable:
        raise InvalidArgument.field(
            "request", f"is not a valid {request.type_name}", reason="UNDECODABLE_REQUEST"
        )


def status_for(error: CoopgateError) -> status_pb2.Status:
    """The rich ``google.rpc.Status`` for a domain error."""
    details: list[Message] = []
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    details.append(info)
    if isinstance(error, InvalidArgument):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if isinstance(error, ResourceExhausted):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(retry)
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)


@dataclass(slots=True)
class Gate:
    """Who may call at all, before any rule: a certificate the CA has not revoked and,
    for a call that changes something, of a registered partner (the gateway's own
    administrators need none: they register partners). An unregistered partner's write
    failed on the store's foreign keys, as INTERNAL."""

    revoked: RevocationList | None = None
    registered: Callable[[str], Awaitable[bool]] | None = None

    def caller(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise Unauthenticated("a client certificate is required")
        identity = identity_from_pem(next(iter(pems)))
        if self.revoked is not None and self.revoked.is_revoked(identity.serial):
            raise Unauthenticated(
                "this client certificate has been revoked", reason="CERTIFICATE_REVOKED"
            )
        return Caller(
            partner_id=identity.partner_id,
            role=identity.role,
            person_id=person_from_metadata(context.invocation_metadata()),
        )

    async def admit(self, caller: Caller) -> None:
        if (
            self.registered is not None
            and caller.role is not Role.ADMIN
            and not await self.registered(caller.partner_id)
        ):
            raise PermissionDenied(
                f"partner {caller.partner_id!r} is not registered at the gateway",
                reason="PARTNER_NOT_REGISTERED",
            )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    if isinstance(exc, CoopgateError):
        # OpenTelemetry's server interceptor sees `abort`, not `abort_with_status`.
        mark_status(exc.code)
        await context.abort_with_status(rpc_status.to_status(status_for(exc)))
    mark_status(grpc.StatusCode.INTERNAL)
    ref = uuid.uuid4().hex[:12]
    log.error("unexpected error (ref %s)", ref, exc_info=exc)
    internal = status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (ref {ref})")
    await context.abort_with_status(rpc_status.to_status(internal))


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Authentication from the certificate, authorization by ``rules``, the partner's
    ``quota`` (None: no limit) and the error mapping, for every RPC; with ``registered``,
    only a registered partner's certificates act (administrators' aside); with ``spans``
    (a process that traces), every call, health and reflection too, runs in its server
    span. A method ``rules`` does not declare answers PERMISSION_DENIED; health and
    reflection are open to any valid certificate."""

    def __init__(
        self,
        revoked: RevocationList | None = None,
        *,
        rules: Mapping[str, Rule] = RULES,
        quota: PartnerQuota | None = None,
        registered: Callable[[str], Awaitable[bool]] | None = None,
        spans: ServerSpans | None = None,
        untraced: frozenset[str] = frozenset(),
    ) -> None:
        self._gate = Gate(revoked, registered)
        self._spans = spans
        self._untraced = untraced
        self._reading = Gate(revoked)
        self._rules = rules
        self._quota = quota
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        # One wrapped handler per method and handler, built once (this runs for every call):
        # the method's rule is resolved here, so a call costs a set membership. With
        # ``spans``, the server span is the outermost wrapping (health and reflection too).
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            made = handler
            spans = None if method in self._untraced else self._spans
            if not method.startswith(_OPEN_SERVICES):
                rule = self._rules.get(method, UNDECLARED)
                gate = self._gate if _changes_something(handler) else self._reading
                made = _wrap(handler, gate, rule, self._quota, method, spans is not None)
            if spans is not None:
                made = spans.traced(made, method)
            wrapped = self._wrapped[method] = (handler, made)
        return wrapped[1]


def _case_of(request: Any) -> str:
    """The case a request names, for its span (requests without one: empty)."""
    case_id = getattr(request, "case_id", "")
    return case_id if isinstance(case_id, str) else ""


def _limits(deserialize: Callable[[bytes], Any] | None) -> Callable[[Any], None] | None:
    """The check of the contract's declared limits for requests of a coopgate.v1
    service (`gateway.api.limits`), compiled once per method."""
    descriptor = _request_descriptor(deserialize)
    if descriptor is None or not descriptor.full_name.startswith(_CONTRACT):
        return None
    return checker(descriptor)


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    gate: Gate,
    rule: Rule,
    quota: PartnerQuota | None,
    method: str = "",
    traced: bool = False,
) -> grpc.RpcMethodHandler[Any, Any]:
    if not rule.roles:
        return _refusing(handler, gate)
    check = _limits(handler.request_deserializer)
    if handler.unary_unary is not None:
        calls = None if quota is None else quota.calls
        record = rpc_recorder(method) if metrics_on() else None
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, gate, check, rule, calls, record, traced),
            request_deserializer=_decoding(handler.request_deserializer),
            response_serializer=_sending_encoded(handler.response_serializer),
        )
    if handler.unary_stream is not None:
        streams = None if quota is None else quota.streams
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream, gate, check, rule, streams, traced),
            request_deserializer=_decoding(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    # The contract has no client-streaming method: one would need wrapping of its own.
    return _refusing(handler, gate)


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], gate: Gate
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind that authenticates the caller, then refuses:
    PERMISSION_DENIED for every caller (deny by default)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            UNDECLARED.admit(gate.caller(context))
        except Exception as exc:
            await _abort(context, exc)

    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
    )
    make = next((make for behavior, make in kinds if behavior is not None), None)
    return (make or grpc.stream_stream_rpc_method_handler)(
        refuse,
        request_deserializer=_decoding(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _wrap_unary(
    behavior: Callable[..., Any],
    gate: Gate,
    check: Callable[[Any], None] | None,
    rule: Rule,
    calls: Slots | None,
    record: Callable[[float, Any], None] | None = None,
    traced: bool = False,
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter() if record is not None else 0.0
        try:
            caller = rule.admit(gate.caller(context))
            if traced:
                annotate(partner=caller.partner_id, case_id=_case_of(request))
            if gate.registered is not None:  # writes only: no await on a read
                await gate.admit(caller)
            if calls is not None:
                calls.take(caller.partner_id)
            token = set_caller(caller)
        except Exception as exc:
            await _abort(context, exc)
        deadline = set_deadline(context.time_remaining())
        try:
            _decoded(request)
            if check is not None:
                check(request)
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)
        finally:
            if calls is not None:
                calls.give_back(caller.partner_id)
            reset_deadline(deadline)
            reset_caller(token)
            if record is not None:
                record(time.perf_counter() - started, context.code())

    return wrapper


def _wrap_stream(
    behavior: Callable[..., Any],
    gate: Gate,
    check: Callable[[Any], None] | None,
    rule: Rule,
    streams: Slots | None,
    traced: bool = False,
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            caller = rule.admit(gate.caller(context))
            if traced:
                annotate(partner=caller.partner_id, case_id=_case_of(request))
            if gate.registered is not None:  # writes only: no await on a read
                await gate.admit(caller)
            if streams is not None:
                streams.take(caller.partner_id)
            token = set_caller(caller)
        except Exception as exc:
            await _abort(context, exc)
        try:
            _decoded(request)
            if check is not None:
                check(request)
        except Exception as exc:
            reset_caller(token)
            if streams is not None:
                streams.give_back(caller.partner_id)
            await _abort(context, exc)
        stream = behavior(request, context)
        try:
            async for response in stream:
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)
        finally:
            if streams is not None:
                streams.give_back(caller.partner_id)
            await stream.aclose()
            reset_caller(token)

    return wrapper
