"""The reference catalogue the embedded stack starts with: the partners and the
three composite services of the source articles (NFC payment, smart heating,
mobile transit pass). Seeded through the admin domain, so it is validated and
recorded like any administrator's change, and idempotent across restarts."""

from __future__ import annotations

from datetime import timedelta

from coopgate.v1 import admin_pb2
from google.protobuf import duration_pb2

from gateway.admin.agreements import SharingAgreements
from gateway.admin.registry import Admin
from gateway.core.caller import Caller, Role

BOOTSTRAP = Caller(partner_id="coopgate", role=Role.ADMIN, person_id="bootstrap")
_SEED = "seed-v1"

PARTNERS: tuple[tuple[str, str, int], ...] = (
    ("telco-a", "Telco A (mobile operator)", admin_pb2.PARTNER_KIND_OPERATOR),
    ("bank-a", "Bank A", admin_pb2.PARTNER_KIND_BANK),
    ("acquirer-a", "Acquirer A (merchant payments)", admin_pb2.PARTNER_KIND_ACQUIRER),
    ("handset-a", "Handset maker A", admin_pb2.PARTNER_KIND_DEVICE_MAKER),
    ("energy-a", "Energy supplier A", admin_pb2.PARTNER_KIND_ENERGY),
    ("thermo-a", "Thermostat maker A", admin_pb2.PARTNER_KIND_DEVICE_MAKER),
    ("isp-a", "Internet provider A", admin_pb2.PARTNER_KIND_INTERNET_PROVIDER),
    ("transit-a", "Transport authority A", admin_pb2.PARTNER_KIND_TRANSPORT),
)


def _d(**kwargs: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(**kwargs))
    return d


def _component(name: str, partner: str, description: str, seconds: float) -> admin_pb2.Component:
    return admin_pb2.Component(
        name=name,
        partner_id=partner,
        description=description,
        diagnosis_deadline=_d(seconds=seconds),
    )


SERVICES: tuple[admin_pb2.Service, ...] = (
    admin_pb2.Service(
        service_id="nfc-payment",
        display_name="Contactless payment by phone",
        components=[
            _component("sim-secure-element", "telco-a", "SIM secure element (NFC applet)", 30),
            _component("card-token", "bank-a", "Tokenised payment card", 30),
            _component("payment-terminal", "acquirer-a", "Merchant terminal and acquiring", 60),
            _component("nfc-stack", "handset-a", "Handset NFC stack firmware", 120),
        ],
        ownership_policy=admin_pb2.OwnershipPolicy(
            min_fault_confidence=0.7, acceptance_deadline=_d(minutes=15)
        ),
        service_level=admin_pb2.ServiceLevel(
            time_to_owner=_d(minutes=30),
            time_to_resolution=_d(hours=4),
            confirmation_window=_d(days=3),
        ),
    ),
    admin_pb2.Service(
        service_id="smart-heating",
        display_name="Remotely controlled heating",
        components=[
            _component("thermostat", "thermo-a", "Connected thermostat and its cloud", 60),
            _component("heating-command", "energy-a", "Heating command and metering", 60),
            _component("home-broadband", "isp-a", "Customer's internet access", 60),
        ],
        ownership_policy=admin_pb2.OwnershipPolicy(
            host_partner_id="energy-a",
            min_fault_confidence=0.6,
            acceptance_deadline=_d(minutes=30),
        ),
        service_level=admin_pb2.ServiceLevel(
            time_to_owner=_d(hours=1),
            time_to_resolution=_d(hours=8),
            confirmation_window=_d(days=7),
        ),
    ),
    admin_pb2.Service(
        service_id="transit-pass",
        display_name="Mobile transit pass",
        components=[
            _component("transit-pass", "transit-a", "Pass, validators and gates", 30),
            _component("sim-secure-element", "telco-a", "SIM secure element (NFC applet)", 30),
            _component("nfc-stack", "handset-a", "Handset NFC stack firmware", 120),
        ],
        ownership_policy=admin_pb2.OwnershipPolicy(
            host_partner_id="transit-a",
            min_fault_confidence=0.7,
            acceptance_deadline=_d(minutes=15),
        ),
        service_level=admin_pb2.ServiceLevel(
            time_to_owner=_d(minutes=30),
            time_to_resolution=_d(hours=24),
            confirmation_window=_d(days=3),
        ),
    ),
)


_FINDINGS_AND_NOTES = ("diagnostic.findings", "interaction.history")
_DIAGNOSIS_AND_RESOLUTION = ("incident-diagnosis", "incident-resolution")

#: The partners' sharing agreements of the reference catalogue (source → recipient), as
#: the scenarios set them up: what a customer's consent can then open to the recipient.
AGREEMENTS: tuple[admin_pb2.SharingAgreement, ...] = tuple(
    admin_pb2.SharingAgreement(
        agreement_id=f"agr-{service}-{source}-{recipient}",
        source_partner_id=source,
        recipient_partner_id=recipient,
        service_id=service,
        categories=_FINDINGS_AND_NOTES,
        purposes=purposes,
    )
    for service, source, recipient, purposes in (
        ("nfc-payment", "telco-a", "bank-a", _DIAGNOSIS_AND_RESOLUTION),
        ("smart-heating", "thermo-a", "energy-a", _DIAGNOSIS_AND_RESOLUTION),
        ("smart-heating", "isp-a", "energy-a", _DIAGNOSIS_AND_RESOLUTION),
        ("transit-pass", "handset-a", "transit-a", ("incident-resolution", "customer-care")),
    )
)


async def seed_agreements(agreements: SharingAgreements) -> None:
    """The reference sharing agreements (idempotent across restarts, like the catalogue)."""
    for agreement in AGREEMENTS:
        await agreements.define_sharing_agreement(
            BOOTSTRAP,
            admin_pb2.DefineSharingAgreementRequest(
                idempotency_key=f"{_SEED}-{agreement.agreement_id}", agreement=agreement
            ),
        )


async def seed(admin: Admin) -> None:
    for partner_id, name, kind in PARTNERS:
        await admin.register_partner(
            BOOTSTRAP,
            admin_pb2.RegisterPartnerRequest(
                idempotency_key=f"{_SEED}-partner-{partner_id}",
                partner_id=partner_id,
                display_name=name,
                kind=kind,  # type: ignore[arg-type]
            ),
        )
    for service in SERVICES:
        await admin.define_service(
            BOOTSTRAP,
            admin_pb2.DefineServiceRequest(
                idempotency_key=f"{_SEED}-service-{service.service_id}", service=service
            ),
        )
