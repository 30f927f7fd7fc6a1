"""What a partner runs: an async client SDK over the generated gRPC API, and
reference partner backends (``partners.reference``) played by the scenarios
(``partners.scenarios``) and the demo (``python -m partners.demo``).

Partners are outside companies: this package imports the generated stubs
(``coopgate.v1``) and never ``gateway`` or ``workflows``.
"""

from partners.channel import PartnerCredentials, gateway_target, secure_channel
from partners.client import PartnerClient
from partners.enums import (
    AuthorKind,
    CaseStatus,
    Channel,
    ConsentState,
    ErasureReason,
    FindingStatus,
    ParticipantRole,
    Purpose,
)
from partners.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from partners.retry import Backoff, RetryPolicy
from partners.work import (
    CaseNotice,
    ConsentPrompt,
    CustomerNotification,
    DiagnosisRequest,
    ErasureNotice,
    Handler,
    OwnershipDecision,
    OwnershipOffer,
    SubscriptionStats,
    WorkItem,
    WorkSubscription,
)

__all__ = [
    "AlreadyExists",
    "AuthorKind",
    "Backoff",
    "CaseNotice",
    "CaseStatus",
    "Channel",
    "ConsentPrompt",
    "ConsentState",
    "CustomerNotification",
    "DeadlineExceeded",
    "DiagnosisRequest",
    "ErasureNotice",
    "ErasureReason",
    "FailedPrecondition",
    "FieldViolation",
    "FindingStatus",
    "GatewayError",
    "Handler",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OwnershipDecision",
    "OwnershipOffer",
    "ParticipantRole",
    "PartnerClient",
    "PartnerCredentials",
    "PermissionDenied",
    "Purpose",
    "RetryPolicy",
    "SubscriptionStats",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WorkItem",
    "WorkSubscription",
    "gateway_target",
    "secure_channel",
]
