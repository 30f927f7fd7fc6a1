"""The reference companies' models and policies, without a gateway: what each
diagnoses under which fault, what a repair changes, and when it takes ownership."""

from __future__ import annotations

from typing import cast

import pytest

from partners import (
    Channel,
    CustomerNotification,
    DiagnosisRequest,
    ErasureNotice,
    ErasureReason,
    FindingStatus,
    PartnerClient,
    WorkItem,
)
from partners.reference import COMPANIES, Faults, OwnershipPolicy, ReferenceBackend, company


def request(service_id: str, component: str, customer: str = "cust-1") -> DiagnosisRequest:
    return DiagnosisRequest(
        request_id="r",
        case_id="case-1",
        service_id=service_id,
        component=component,
        customer_local_id=customer,
        subject_id="s",
        summary="",
        deadline=None,
    )


@pytest.mark.parametrize(
    ("kind", "fault", "service", "component", "status", "code"),
    [
        ("operator", "payment-applet-locked", "nfc-payment", "sim-secure-element", "FAULTY",
         "SE_PAYMENT_APPLET_LOCKED"),
        ("operator", "payment-applet-locked", "transit-pass", "sim-secure-element", "OK", ""),
        ("operator", "network-outage", "nfc-payment-x1", "sim-secure-element", "DEGRADED",
         "CELL_OUTAGE"),
        ("bank", "card-blocked", "nfc-payment", "card-token", "FAULTY", "CARD_BLOCKED"),
        ("bank", "card-expired", "nfc-payment", "card-token", "FAULTY", "CARD_EXPIRED"),
        ("bank", "token-suspended", "nfc-payment", "card-token", "FAULTY",
         "WALLET_TOKEN_SUSPENDED"),
        ("bank", "3ds-failure", "nfc-payment", "card-token", "DEGRADED", "THREE_DS_ACS_TIMEOUT"),
        ("acquirer", "terminal-offline", "nfc-payment", "payment-terminal", "FAULTY",
         "TERMINAL_OFFLINE"),
        ("handset", "firmware-regression", "transit-pass", "nfc-stack", "FAULTY",
         "NFC_FW_NFC_1182"),
        ("handset", "firmware-regression", "nfc-payment", "nfc-stack", "OK", ""),
        ("handset", "hce-routing-bug", "nfc-payment", "nfc-stack", "FAULTY", "NFC_FW_NFC_1077"),
        ("transport", "gate-validator-fault", "transit-pass", "transit-pass", "FAULTY",
         "GATE_VALIDATOR_READ_ERROR"),
        ("energy", "command-queue-stalled", "smart-heating", "heating-command", "FAULTY",
         "HEATING_COMMAND_QUEUE_STALLED"),
        ("thermostat", "relay-cert-expired", "smart-heating", "thermostat", "FAULTY",
         "THERMOSTAT_RELAY_CERT_EXPIRED"),
        ("isp", "outage", "smart-heating", "home-broadband", "FAULTY", "BROADBAND_OUTAGE"),
    ],
)  # fmt: skip
def test_a_fault_shows_in_the_diagnosis_of_the_services_it_affects(
    kind: str, fault: str, service: str, component: str, status: str, code: str
) -> None:
    model = COMPANIES[kind].make_model(frozenset({fault}))
    diagnosis = model.diagnose(request(service, component))
    assert (diagnosis.status.name, diagnosis.fault_code) == (status, code)
    assert diagnosis.detail
    healthy = COMPANIES[kind].make_model(frozenset()).diagnose(request(service, component))
    assert healthy.status == FindingStatus.OK


@pytest.mark.parametrize(
    ("kind", "fault", "service", "component"),
    [
        ("operator", "payment-applet-locked", "nfc-payment", "sim-secure-element"),
        ("handset", "firmware-regression", "transit-pass", "nfc-stack"),
        ("thermostat", "relay-cert-expired", "smart-heating", "thermostat"),
        ("bank", "card-blocked", "nfc-payment", "card-token"),
    ],
)
def test_a_repair_fixes_what_the_diagnosis_found(
    kind: str, fault: str, service: str, component: str
) -> None:
    model = COMPANIES[kind].make_model(frozenset({fault}))
    found = model.diagnose(request(service, component))
    repair = model.repair(found)
    assert repair is not None
    assert repair.note
    assert model.diagnose(request(service, component)).status == FindingStatus.OK
    assert model.repair(model.diagnose(request(service, component))) is None


def test_the_bank_does_not_guess_about_a_customer_it_does_not_know() -> None:
    model = company("bank-a").make_model(frozenset())
    assert model.diagnose(request("nfc-payment", "card-token", "")).status == (
        FindingStatus.UNKNOWN
    )


def test_faults_parse_model_and_behaviour_knobs() -> None:
    operator = company("operator")
    faults = Faults.parse(
        ["payment-applet-locked", "slow:1.5", "drop-stream", "garbage", "silent"],
        operator.faults,
    )
    assert faults.model == {"payment-applet-locked"}
    assert (faults.slow, faults.drop_stream, faults.garbage, faults.silent) == (
        1.5,
        True,
        True,
        True,
    )
    assert Faults.parse(["slow"], operator.faults).slow == 2.0
    with pytest.raises(ValueError, match="payment-applet-locked"):
        Faults.parse(["card-blocked"], operator.faults)
    with pytest.raises(ValueError, match="seconds"):
        Faults.parse(["slow:soon"], operator.faults)


def test_ownership_is_taken_within_expertise_and_capacity_only() -> None:
    policy = OwnershipPolicy(expertise=("nfc-payment",), capacity=2)
    assert policy.decide("nfc-payment", 0)[0]
    assert policy.decide("nfc-payment-drill", 1)[0]
    accepted, why = policy.decide("nfc-payment", 2)
    assert not accepted
    assert "capacity" in why
    accepted, why = policy.decide("nfc-paymentx", 0)
    assert not accepted
    assert "expertise" in why
    assert not policy.decide("smart-heating", 0)[0]


async def test_a_reference_backend_forgets_an_erased_customer() -> None:
    backend = ReferenceBackend(
        COMPANIES["bank"], cast(PartnerClient, None), partner_id="bank-a", out=lambda _: None
    )
    for case_id, customer in (("case-1", "cust-1"), ("case-2", "cust-1"), ("case-3", "cust-2")):
        await backend.handle(
            WorkItem(
                work_id=f"w-{case_id}",
                created_at=None,
                redeliveries=0,
                payload=CustomerNotification(
                    notification_id="n",
                    case_id=case_id,
                    customer_local_id=customer,
                    channel=Channel.PHONE,
                    milestone="received",
                    message="we are on it",
                ),
            )
        )
    backend.owned.update({"case-1", "case-3"})
    await backend.handle(
        WorkItem(
            work_id="erasure-1",
            created_at=None,
            redeliveries=0,
            payload=ErasureNotice(
                notice_id="erasure-1",
                customer_local_id="cust-1",
                case_ids=(),
                erased_at=None,
                reason=ErasureReason.CUSTOMER_REQUEST,
            ),
        )
    )
    assert [s.customer_local_id for s in backend.shown] == ["cust-2"]
    assert backend.owned == {"case-3"}
    assert backend.erasures == ["erasure-1"]
    # A participant not linked to the customer is told the case.
    await backend.handle(
        WorkItem(
            work_id="erasure-2",
            created_at=None,
            redeliveries=0,
            payload=ErasureNotice(
                notice_id="erasure-2",
                customer_local_id="",
                case_ids=("case-3",),
                erased_at=None,
                reason=ErasureReason.CUSTOMER_REQUEST,
            ),
        )
    )
    assert backend.shown == []
    assert backend.owned == set()


async def test_a_reference_backend_forgets_only_the_cases_whose_retention_ended() -> None:
    backend = ReferenceBackend(
        COMPANIES["bank"], cast(PartnerClient, None), partner_id="bank-a", out=lambda _: None
    )
    for case_id in ("case-1", "case-2"):
        await backend.handle(
            WorkItem(
                work_id=f"w-{case_id}",
                created_at=None,
                redeliveries=0,
                payload=CustomerNotification(
                    notification_id="n",
                    case_id=case_id,
                    customer_local_id="cust-1",
                    channel=Channel.PHONE,
                    milestone="received",
                    message="we are on it",
                ),
            )
        )
    backend.owned.update({"case-1", "case-2"})
    await backend.handle(
        WorkItem(
            work_id="erasure-3",
            created_at=None,
            redeliveries=0,
            payload=ErasureNotice(
                notice_id="erasure-3",
                customer_local_id="",
                case_ids=("case-1",),
                erased_at=None,
                reason=ErasureReason.RETENTION_EXPIRED,
            ),
        )
    )
    assert [(s.case_id, s.customer_local_id) for s in backend.shown] == [("case-2", "cust-1")]
    assert backend.owned == {"case-2"}
    assert backend.erasures == ["erasure-3"]


@pytest.mark.parametrize("standing", [True, False])
def test_standing_faults_come_back_for_the_next_case(standing: bool) -> None:
    """`coopgate up` runs its partners so: after the README's tour repaired Telco A's
    applet, the demo's next case still finds it locked."""
    backend = ReferenceBackend(
        COMPANIES["operator"],
        cast(PartnerClient, None),
        faults=Faults.parse(["payment-applet-locked"], COMPANIES["operator"].faults),
        out=lambda _: None,
        standing_faults=standing,
    )
    found = backend.model.diagnose(request("nfc-payment", "sim-secure-element"))
    assert found.status == FindingStatus.FAULTY
    repair = backend.model.repair(found)
    assert repair is not None
    backend.fixed("case-1", repair)
    again = backend.model.diagnose(request("nfc-payment", "sim-secure-element", "cust-2"))
    assert again.status == (FindingStatus.FAULTY if standing else FindingStatus.OK)
