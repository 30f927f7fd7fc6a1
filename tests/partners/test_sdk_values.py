"""The SDK's values without a gateway: backoff timing, error translation from
rich gRPC statuses, and typed work items from the wire."""

from __future__ import annotations

import datetime as dt
import random

import grpc
import pytest
from coopgate.v1 import cases_pb2, work_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from partners import (
    CaseNotice,
    Channel,
    ConsentPrompt,
    CustomerNotification,
    DiagnosisRequest,
    ErasureNotice,
    ErasureReason,
    GatewayError,
    InvalidArgument,
    OwnershipOffer,
    RetryPolicy,
)
from partners.errors import from_rpc_error
from partners.retry import Backoff
from partners.work import work_item_from_proto


def test_backoff_grows_to_its_ceiling_and_jitter_only_shortens() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for retry, ceiling in enumerate(ceilings):
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert min(delays) >= ceiling * 0.5
        assert max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling * 0.3  # jittered, not constant
    exact = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, jitter=0)
    assert [exact.delay(n) for n in range(3)] == [0.1, 0.2, 0.4]


def test_an_unbounded_backoff_resets_and_never_overflows() -> None:
    backoff = Backoff(RetryPolicy(initial_backoff=0.1, max_backoff=2.0, jitter=0))
    delays = [backoff.next() for _ in range(2000)]
    assert delays[:3] == [0.1, 0.2, 0.4]
    assert delays[-1] == 2.0
    backoff.reset()
    assert backoff.next() == 0.1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"jitter": 1.5}, "jitter"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, "initial_backoff"),
    ],
)
def test_a_nonsensical_policy_is_refused(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**settings)  # type: ignore[arg-type]


def _rich_error(code: grpc.StatusCode, message: str, *details: object) -> grpc.aio.AioRpcError:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)  # type: ignore[arg-type]
        packed.append(any_detail)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def test_bad_input_becomes_invalid_argument_with_each_field() -> None:
    error = _rich_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request",
        error_details_pb2.ErrorInfo(reason="UNKNOWN_SERVICE", domain="coopgate.dev"),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="service_id", description="unknown service"
                )
            ]
        ),
    )
    translated = from_rpc_error(error, method="OpenCase", attempts=1)
    assert isinstance(translated, InvalidArgument)
    assert translated.reason == "UNKNOWN_SERVICE"
    assert translated.domain == "coopgate.dev"
    assert [(v.field, v.description) for v in translated.violations] == [
        ("service_id", "unknown service")
    ]
    assert not translated.retryable
    assert "service_id: unknown service" in str(translated)


def test_a_code_without_its_own_class_keeps_its_code() -> None:
    translated = from_rpc_error(
        grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, details="slow down")
    )
    assert type(translated) is GatewayError
    assert translated.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert translated.reason == ""


def test_every_work_kind_becomes_its_typed_value() -> None:
    deadline = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    diagnosis = work_pb2.WorkItem(
        work_id="w1",
        redeliveries=2,
        diagnosis_request=work_pb2.DiagnosisRequest(
            request_id="r", case_id="c", service_id="s", component="sim", summary="x"
        ),
    )
    diagnosis.diagnosis_request.deadline.FromDatetime(deadline)
    typed = work_item_from_proto(diagnosis)
    assert typed.redeliveries == 2
    assert typed.payload == DiagnosisRequest(
        request_id="r",
        case_id="c",
        service_id="s",
        component="sim",
        customer_local_id="",
        subject_id="",
        summary="x",
        deadline=deadline,
    )
    offer = work_item_from_proto(
        work_pb2.WorkItem(
            ownership_offer=work_pb2.OwnershipOffer(
                offer_id="o",
                case_id="c",
                decision=cases_pb2.OwnershipDecision(
                    relationship_owner_id="bank-a", resolver_ids=["telco-a"], rule="r"
                ),
            )
        )
    ).payload
    assert isinstance(offer, OwnershipOffer)
    assert offer.decision.resolver_ids == ("telco-a",)
    assert offer.deadline is None
    notification = work_item_from_proto(
        work_pb2.WorkItem(
            customer_notification=work_pb2.CustomerNotification(case_id="c", channel=7)  # type: ignore[arg-type]
        )
    ).payload
    assert isinstance(notification, CustomerNotification)
    assert notification.channel is Channel.STORE
    prompt = work_item_from_proto(
        work_pb2.WorkItem(
            consent_prompt=work_pb2.ConsentPrompt(categories=["device.sim"], channel=99)  # type: ignore[arg-type]
        )
    ).payload
    assert isinstance(prompt, ConsentPrompt)
    assert prompt.categories == ("device.sim",)
    assert prompt.channel is Channel.UNSPECIFIED  # a channel this SDK does not know yet
    notice = work_item_from_proto(
        work_pb2.WorkItem(case_notice=work_pb2.CaseNotice(kind="escalation"))
    ).payload
    assert isinstance(notice, CaseNotice)
    assert notice.kind == "escalation"
    assert work_item_from_proto(work_pb2.WorkItem(work_id="w9")).payload is None


def test_an_erasure_notice_becomes_its_typed_value() -> None:
    erased_at = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    wire = work_pb2.WorkItem(
        work_id="erasure-1",
        erasure_notice=work_pb2.ErasureNotice(
            notice_id="erasure-1",
            customer_local_id="cust-9",
            case_ids=["case-1", "case-2"],
            reason=work_pb2.ERASURE_REASON_CUSTOMER_REQUEST,
        ),
    )
    wire.erasure_notice.erased_at.FromDatetime(erased_at)
    notice = work_item_from_proto(wire).payload
    assert notice == ErasureNotice(
        notice_id="erasure-1",
        customer_local_id="cust-9",
        case_ids=("case-1", "case-2"),
        erased_at=erased_at,
        reason=ErasureReason.CUSTOMER_REQUEST,
    )
    expired = work_item_from_proto(
        work_pb2.WorkItem(
            erasure_notice=work_pb2.ErasureNotice(
                notice_id="erasure-2",
                case_ids=["case-3"],
                reason=work_pb2.ERASURE_REASON_RETENTION_EXPIRED,
            )
        )
    ).payload
    assert expired == ErasureNotice(
        notice_id="erasure-2",
        customer_local_id="",
        case_ids=("case-3",),
        erased_at=None,
        reason=ErasureReason.RETENTION_EXPIRED,
    )
    unknown = work_item_from_proto(
        work_pb2.WorkItem(erasure_notice=work_pb2.ErasureNotice(reason=99))  # type: ignore[arg-type]
    ).payload
    assert isinstance(unknown, ErasureNotice)
    assert unknown.reason is ErasureReason.UNSPECIFIED  # a reason this SDK does not know yet


def test_a_notification_is_never_an_erasure_notice() -> None:
    """Erasure notices have their own kind: a customer notification is one, whatever
    its milestone says."""
    notification = work_item_from_proto(
        work_pb2.WorkItem(
            work_id="n-1",
            customer_notification=work_pb2.CustomerNotification(
                notification_id="n-1", customer_local_id="cust-9", milestone="erased"
            ),
        )
    ).payload
    assert isinstance(notification, CustomerNotification)
    assert notification.milestone == "erased"
