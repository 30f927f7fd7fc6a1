"""Table definitions (SQLAlchemy Core). Alembic migrations create them.

Timestamps are timezone-aware UTC on both SQLite and PostgreSQL
(``UtcDateTime``). Case timeline events are stored as serialized
``coopgate.v1.TimelineItem`` messages so the view is rebuilt exactly.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


partners = Table(
    "partners",
    metadata,
    Column("partner_id", String(63), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("kind", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

services = Table(
    "services",
    metadata,
    Column("service_id", String(63), primary_key=True),
    Column("version", BigInteger, nullable=False),
    # Serialized coopgate.v1.Service: components, policy and service levels.
    Column("definition", LargeBinary, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

service_components = Table(
    "service_components",
    metadata,
    Column(
        "service_id",
        String(63),
        ForeignKey("services.service_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String(100), primary_key=True),
    Column("partner_id", String(63), ForeignKey("partners.partner_id"), nullable=False),
    Column("position", Integer, nullable=False),
    Index("ix_service_components_partner", "partner_id"),
)

sharing_agreements = Table(
    "sharing_agreements",
    metadata,
    Column("agreement_id", String(64), primary_key=True),
    Column("source_partner_id", String(63), ForeignKey("partners.partner_id"), nullable=False),
    Column("recipient_partner_id", String(63), ForeignKey("partners.partner_id"), nullable=False),
    Column("service_id", String(63), ForeignKey("services.service_id"), nullable=False),
    # Serialized coopgate.v1.SharingAgreement.
    Column("definition", LargeBinary, nullable=False),
    Column("valid_from", UtcDateTime, nullable=False),
    Column("valid_until", UtcDateTime, nullable=True),
    Index("ix_sharing_agreements_pair", "source_partner_id", "recipient_partner_id"),
)

subjects = Table(
    "subjects",
    metadata,
    Column("subject_id", String(64), primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    #: Bumped by a trigger at every change to the subject's consents (migration 0007).
    Column("consents_version", BigInteger, nullable=False, server_default="0"),
)

#: Versions the database keeps of whole tables, bumped by triggers (migration 0007):
#: ``sharing_agreements`` changes with every agreement written.
change_counters = Table(
    "change_counters",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

subject_links = Table(
    "subject_links",
    metadata,
    Column("partner_id", String(63), ForeignKey("partners.partner_id"), primary_key=True),
    # The partner's own id for the customer is never stored in clear (migration 0009):
    # it is found by its keyed hash (`gateway.store.localids`) and kept sealed under
    # the subject's key (subject_keys), which erasure destroys.
    Column("local_hash", LargeBinary, primary_key=True),
    Column("sealed_local_id", LargeBinary, nullable=False),
    Column("subject_id", String(64), ForeignKey("subjects.subject_id"), nullable=False),
    Column("linked_at", UtcDateTime, nullable=False),
    Index("ix_subject_links_subject", "subject_id"),
)

subject_keys = Table(
    "subject_keys",
    metadata,
    Column(
        "subject_id",
        String(64),
        ForeignKey("subjects.subject_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # The subject's key wrapped under the master key (nonce || AES-GCM); NULL once erased.
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("destroyed_at", UtcDateTime, nullable=True),
)

cases = Table(
    "cases",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("service_id", String(63), ForeignKey("services.service_id"), nullable=False),
    Column("service_version", BigInteger, nullable=False),
    Column("subject_id", String(64), ForeignKey("subjects.subject_id"), nullable=False),
    Column(
        "first_contact_partner_id", String(63), ForeignKey("partners.partner_id"), nullable=False
    ),
    Column("first_contact_channel", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("summary", Text, nullable=False),
    Column("relationship_owner_id", String(63), ForeignKey("partners.partner_id")),
    Column("opened_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("last_sequence", BigInteger, nullable=False),
    Index("ix_cases_subject", "subject_id", "service_id"),
    Index("ix_cases_opened", "opened_at"),
)

case_participants = Table(
    "case_participants",
    metadata,
    Column(
        "case_id", String(64), ForeignKey("cases.case_id", ondelete="CASCADE"), primary_key=True
    ),
    Column("partner_id", String(63), ForeignKey("partners.partner_id"), primary_key=True),
    Column("role", Integer, primary_key=True),
    Column("person_id", String(200), nullable=False, default=""),
    Index("ix_case_participants_partner", "partner_id"),
)

case_events = Table(
    "case_events",
    metadata,
    Column(
        "case_id", String(64), ForeignKey("cases.case_id", ondelete="CASCADE"), primary_key=True
    ),
    Column("sequence", BigInteger, primary_key=True),
    Column("occurred_at", UtcDateTime, nullable=False),
    # The partner whose data this is; "" for the gateway's own events.
    Column("source_partner_id", String(63), nullable=False),
    Column("category", String(100), nullable=False),
    # Serialized coopgate.v1.TimelineItem.
    Column("item", LargeBinary, nullable=False),
    # Deterministic id of an event written by an activity, so a retry writes it once.
    Column("dedup_key", String(200), nullable=True),
    Index("uq_case_events_dedup", "case_id", "dedup_key", unique=True),
)

case_resolutions = Table(
    "case_resolutions",
    metadata,
    Column(
        "case_id", String(64), ForeignKey("cases.case_id", ondelete="CASCADE"), primary_key=True
    ),
    # Named to the case's workflow in place of the text (ResolveRequest.resolution_id).
    Column("resolution_id", String(64), primary_key=True),
    Column("partner_id", String(63), nullable=False),
    # The owner's resolution, sealed under the case key (aad: "CASE/resolution/ID").
    Column("sealed_text", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# The case's incident workflow to start: written with the case, deleted once the start
# is known to have happened; what is left is swept (`gateway.cases.starts`).
workflow_starts = Table(
    "workflow_starts",
    metadata,
    Column(
        "case_id", String(64), ForeignKey("cases.case_id", ondelete="CASCADE"), primary_key=True
    ),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_workflow_starts_created", "created_at"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("partner_id", String(63), primary_key=True),
    Column("method", String(200), primary_key=True),
    Column("idempotency_key", String(128), primary_key=True),
    Column("request_hash", LargeBinary, nullable=False),
    # The response, as stored; emptied (b"") when the customer or case it concerns is erased.
    Column("response", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # What the call concerned, so that erasure and retention reach its stored response
    # (migration 0008): the subject named by the request's customer_local_id, the case
    # named by the request or the response.
    Column("subject_id", String(64), nullable=True),
    Column("case_id", String(64), nullable=True),
    # Set when the response was emptied: a retry answers CUSTOMER_ERASED.
    Column("erased_at", UtcDateTime, nullable=True),
    Index("ix_idempotency_keys_subject", "subject_id"),
    Index("ix_idempotency_keys_case", "case_id"),
)

consents = Table(
    "consents",
    metadata,
    Column("consent_id", String(64), primary_key=True),
    Column("subject_id", String(64), ForeignKey("subjects.subject_id"), nullable=False),
    Column("source_partner_id", String(63), ForeignKey("partners.partner_id"), nullable=False),
    Column(
        "collected_by_partner_id", String(63), ForeignKey("partners.partner_id"), nullable=False
    ),
    # coopgate.v1.ConsentState
    Column("state", Integer, nullable=False),
    Column("valid_from", UtcDateTime, nullable=False),
    Column("valid_until", UtcDateTime, nullable=True),
    # Serialized coopgate.v1.Consent without events; subject_id left empty.
    Column("definition", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_consents_subject_source", "subject_id", "source_partner_id"),
)

consent_events = Table(
    "consent_events",
    metadata,
    Column(
        "consent_id",
        String(64),
        ForeignKey("consents.consent_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("sequence", Integer, primary_key=True),
    Column("state", Integer, nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("partner_id", String(63), nullable=False),
    Column("channel", Integer, nullable=False),
)

consent_requests = Table(
    "consent_requests",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("case_id", String(64), ForeignKey("cases.case_id", ondelete="CASCADE"), nullable=False),
    Column("subject_id", String(64), ForeignKey("subjects.subject_id"), nullable=False),
    Column("requested_by_partner_id", String(63), nullable=False),
    Column("relayed_by_partner_id", String(63), nullable=False),
    # coopgate.v1.ConsentState: REQUESTED, then GIVEN or REFUSED.
    Column("state", Integer, nullable=False),
    # Serialized coopgate.v1.ConsentPrompt.
    Column("prompt", LargeBinary, nullable=False),
    Column("consent_id", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("resolved_at", UtcDateTime, nullable=True),
)

work_items = Table(
    "work_items",
    metadata,
    Column("work_id", String(200), primary_key=True),
    Column("partner_id", String(63), ForeignKey("partners.partner_id"), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # Serialized coopgate.v1.WorkItem.
    Column("item", LargeBinary, nullable=False),
    Column("deliveries", Integer, nullable=False),
    Column("acked_at", UtcDateTime, nullable=True),
    # The case the item is about (every payload names one; migration 0008), so that
    # erasure and retention delete the case's items; an erasure notice names none.
    Column("case_id", String(64), nullable=True),
    # Set on an erasure notice only: the erased subject, for the acknowledgement's audit.
    Column("subject_id", String(64), nullable=True),
    Index("ix_work_items_pending", "partner_id", "acked_at", "created_at"),
    Index("ix_work_items_case", "case_id"),
)

audit_head = Table(
    "audit_head",
    metadata,
    # A single row (id = 1): the log's size. Appenders lock it, so two
    # writers never take the same index.
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
)

#: The leaf index: on SQLite an INTEGER primary key, so the index is the table's own rowid
#: (a BIGINT key would be a second B-tree written on every append).
_LEAF_INDEX = BigInteger().with_variant(Integer(), "sqlite")

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("idx", _LEAF_INDEX, primary_key=True, autoincrement=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("actor_partner_id", String(63), nullable=False),
    Column("subject_id", String(64), nullable=False),
    Column("case_id", String(64), nullable=False),
    Column("purpose", String(63), nullable=False),
    Column("decision", String(10), nullable=False),
    # The exact bytes hashed into the leaf (canonical JSON); the other
    # columns are an index over it.
    Column("canonical", LargeBinary, nullable=False),
    Index("ix_audit_entries_subject", "subject_id", "idx"),
    Index("ix_audit_entries_actor", "actor_partner_id", "idx"),
    Index("ix_audit_entries_case", "case_id", "idx"),
    Index("ix_audit_entries_time", "recorded_at"),
)

audit_nodes = Table(
    "audit_nodes",
    metadata,
    # Hash of the complete subtree of 2**level leaves starting at leaf
    # idx * 2**level (level 0: the leaf hashes). Proofs read these.
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
    # SQLite: the rows live in the primary key's B-tree (no rowid table beside it).
    sqlite_with_rowid=False,
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

case_kpis = Table(
    "case_kpis",
    metadata,
    Column(
        "case_id", String(64), ForeignKey("cases.case_id", ondelete="CASCADE"), primary_key=True
    ),
    Column("service_id", String(63), nullable=False),
    Column("time_to_owner_s", Float, nullable=True),
    Column("time_to_resolution_s", Float, nullable=True),
    Column("first_contact_resolution", Boolean, nullable=False),
    Column("sla_breaches", Integer, nullable=False),
    Column("reopens", Integer, nullable=False),
    # JSON: {"sla_breaches": [...], "partner_response_s": {...}, "unresponsive": [...]}
    Column("details", Text, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
)

link_codes = Table(
    "link_codes",
    metadata,
    # SHA-256 of the one-time code: the code itself is never stored.
    Column("code_hash", LargeBinary, primary_key=True),
    Column("partner_id", String(63), nullable=False),
    Column("subject_id", String(64), ForeignKey("subjects.subject_id"), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("used_at", UtcDateTime, nullable=True),
)

identifier_hashes = Table(
    "identifier_hashes",
    metadata,
    Column("partner_id", String(63), primary_key=True),
    # The keyed hash of the partner's local id (as subject_links.local_hash).
    Column("local_hash", LargeBinary, primary_key=True),
    Column("kind", Integer, primary_key=True),
    # HMAC-SHA-256 of the normalised identifier under a gateway secret.
    Column("digest", LargeBinary, primary_key=True),
    Index("ix_identifier_hashes_digest", "digest"),
)

match_proposals = Table(
    "match_proposals",
    metadata,
    Column("match_id", String(64), primary_key=True),
    # The partner whose customer must confirm, and the keyed hash of its local id.
    Column("partner_id", String(63), nullable=False),
    Column("local_hash", LargeBinary, nullable=False),
    # The subject the customer would join.
    Column("subject_id", String(64), ForeignKey("subjects.subject_id"), nullable=False),
    Column("matched_on", String(100), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("confirmed_at", UtcDateTime, nullable=True),
)

case_keys = Table(
    "case_keys",
    metadata,
    Column(
        "case_id", String(64), ForeignKey("cases.case_id", ondelete="CASCADE"), primary_key=True
    ),
    # The case's data key wrapped under the master key (nonce || AES-GCM); NULL once erased.
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("destroyed_at", UtcDateTime, nullable=True),
)
