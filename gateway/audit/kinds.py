"""The words the log stores for an entry's kind and decision, and the contract's enums
for them: one table, read by the service and by the command line."""

from __future__ import annotations

from collections.abc import Mapping

from coopgate.v1 import audit_pb2

KINDS: Mapping[str, audit_pb2.AuditKind.ValueType] = {
    "consent": audit_pb2.AUDIT_KIND_CONSENT_EVENT,
    "access": audit_pb2.AUDIT_KIND_ACCESS_DECISION,
    "ownership": audit_pb2.AUDIT_KIND_OWNERSHIP_DECISION,
    "admin": audit_pb2.AUDIT_KIND_ADMIN_CHANGE,
    "case": audit_pb2.AUDIT_KIND_CASE_EVENT,
    "escalation": audit_pb2.AUDIT_KIND_ESCALATION,
    "identity": audit_pb2.AUDIT_KIND_IDENTITY_LINK,
    "erasure": audit_pb2.AUDIT_KIND_ERASURE,
}
KIND_NAMES: Mapping[audit_pb2.AuditKind.ValueType, str] = {v: k for k, v in KINDS.items()}

DECISIONS: Mapping[str, audit_pb2.Decision.ValueType] = {
    "allow": audit_pb2.DECISION_ALLOW,
    "deny": audit_pb2.DECISION_DENY,
}
DECISION_NAMES: Mapping[audit_pb2.Decision.ValueType, str] = {v: k for k, v in DECISIONS.items()}
