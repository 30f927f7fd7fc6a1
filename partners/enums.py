"""The API's enumerations as Python enums, so partner code reads ``Channel.PHONE``
rather than ``common_pb2.CHANNEL_PHONE``. Values are the wire numbers; a value a
newer gateway sends and this SDK does not know becomes ``UNSPECIFIED``."""

from __future__ import annotations

import enum
from typing import Self

from coopgate.v1 import cases_pb2, common_pb2, consents_pb2, work_pb2


class _WireEnum(enum.IntEnum):
    @classmethod
    def of(cls, value: int) -> Self:
        """The member for a wire value; unknown values map to the zero member."""
        try:
            return cls(value)
        except ValueError:
            return cls(0)

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Channel(_WireEnum):
    """Where the customer spoke to a partner; notifications go back the same way."""

    UNSPECIFIED = common_pb2.CHANNEL_UNSPECIFIED
    PHONE = common_pb2.CHANNEL_PHONE
    IVR = common_pb2.CHANNEL_IVR
    CHAT = common_pb2.CHANNEL_CHAT
    EMAIL = common_pb2.CHANNEL_EMAIL
    WEB = common_pb2.CHANNEL_WEB
    APP = common_pb2.CHANNEL_APP
    STORE = common_pb2.CHANNEL_STORE
    SOCIAL = common_pb2.CHANNEL_SOCIAL

    def wire(self) -> common_pb2.Channel.ValueType:
        return common_pb2.Channel.ValueType(int(self))


class CaseStatus(_WireEnum):
    UNSPECIFIED = cases_pb2.CASE_STATUS_UNSPECIFIED
    RECEIVED = cases_pb2.CASE_STATUS_RECEIVED
    DIAGNOSING = cases_pb2.CASE_STATUS_DIAGNOSING
    AWAITING_OWNER = cases_pb2.CASE_STATUS_AWAITING_OWNER
    OWNED = cases_pb2.CASE_STATUS_OWNED
    RESOLVED = cases_pb2.CASE_STATUS_RESOLVED
    CLOSED = cases_pb2.CASE_STATUS_CLOSED
    REOPENED = cases_pb2.CASE_STATUS_REOPENED

    def wire(self) -> cases_pb2.CaseStatus.ValueType:
        return cases_pb2.CaseStatus.ValueType(int(self))


class FindingStatus(_WireEnum):
    """A partner's verdict on its component (UNRESPONSIVE is the gateway's, never sent)."""

    UNSPECIFIED = cases_pb2.FINDING_STATUS_UNSPECIFIED
    OK = cases_pb2.FINDING_STATUS_OK
    DEGRADED = cases_pb2.FINDING_STATUS_DEGRADED
    FAULTY = cases_pb2.FINDING_STATUS_FAULTY
    UNKNOWN = cases_pb2.FINDING_STATUS_UNKNOWN
    UNRESPONSIVE = cases_pb2.FINDING_STATUS_UNRESPONSIVE

    def wire(self) -> cases_pb2.FindingStatus.ValueType:
        return cases_pb2.FindingStatus.ValueType(int(self))


class AuthorKind(_WireEnum):
    UNSPECIFIED = cases_pb2.AUTHOR_KIND_UNSPECIFIED
    ADVISOR = cases_pb2.AUTHOR_KIND_ADVISOR
    BOT = cases_pb2.AUTHOR_KIND_BOT
    CUSTOMER = cases_pb2.AUTHOR_KIND_CUSTOMER
    SYSTEM = cases_pb2.AUTHOR_KIND_SYSTEM

    def wire(self) -> cases_pb2.AuthorKind.ValueType:
        return cases_pb2.AuthorKind.ValueType(int(self))


class ParticipantRole(_WireEnum):
    UNSPECIFIED = cases_pb2.PARTICIPANT_ROLE_UNSPECIFIED
    FIRST_CONTACT = cases_pb2.PARTICIPANT_ROLE_FIRST_CONTACT
    RELATIONSHIP_OWNER = cases_pb2.PARTICIPANT_ROLE_RELATIONSHIP_OWNER
    RESOLVER = cases_pb2.PARTICIPANT_ROLE_RESOLVER
    DIAGNOSER = cases_pb2.PARTICIPANT_ROLE_DIAGNOSER
    EXPERT = cases_pb2.PARTICIPANT_ROLE_EXPERT


class ConsentState(_WireEnum):
    UNSPECIFIED = consents_pb2.CONSENT_STATE_UNSPECIFIED
    REQUESTED = consents_pb2.CONSENT_STATE_REQUESTED
    GIVEN = consents_pb2.CONSENT_STATE_GIVEN
    REFUSED = consents_pb2.CONSENT_STATE_REFUSED
    WITHDRAWN = consents_pb2.CONSENT_STATE_WITHDRAWN
    EXPIRED = consents_pb2.CONSENT_STATE_EXPIRED

    def wire(self) -> consents_pb2.ConsentState.ValueType:
        return consents_pb2.ConsentState.ValueType(int(self))


class ErasureReason(_WireEnum):
    """Why an ``ErasureNotice`` came: the customer asked to be erased (forget them),
    or the cases' retention period ended (forget those cases)."""

    UNSPECIFIED = work_pb2.ERASURE_REASON_UNSPECIFIED
    CUSTOMER_REQUEST = work_pb2.ERASURE_REASON_CUSTOMER_REQUEST
    RETENTION_EXPIRED = work_pb2.ERASURE_REASON_RETENTION_EXPIRED


class Purpose(enum.StrEnum):
    """The purposes of the gateway's default vocabulary (a gateway may configure more)."""

    INCIDENT_DIAGNOSIS = "incident-diagnosis"
    INCIDENT_RESOLUTION = "incident-resolution"
    CUSTOMER_CARE = "customer-care"
    SERVICE_IMPROVEMENT = "service-improvement"
    MARKETING = "marketing"
