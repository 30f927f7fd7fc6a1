"""The inventory of personal data at rest (GDPR art. 30): what every text or binary
column of the store may hold, how it is protected, how long it is kept and what
erasure does to it. docs/PRIVACY.md is the same record for people; the test
tests/gateway/store/test_privacy_inventory.py fails when a column of ``schema.metadata``
that can hold text or bytes has no entry here, or when the page does not name one."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Holds(StrEnum):
    """What a column can hold, about whom."""

    #: Random or derived ids of the gateway's own (subject, case, consent, work ids):
    #: pseudonymous references, meaningless outside the gateway.
    REFERENCE = "reference"
    #: Partners, services, agreements, vocabulary: data about companies, not people.
    ORGANISATION = "organisation"
    #: A partner's own identifier for the customer (its CRM id, an e-mail, a phone).
    CUSTOMER_ID = "customer id"
    #: Text about the customer: summaries, interactions, findings, prompts, consents.
    CUSTOMER_DATA = "customer data"
    #: An advisor's (a partner employee's) identifier, as the partner asserted it.
    STAFF_ID = "staff id"
    #: Hashes and digests of something else (a one-way function of it).
    DIGEST = "digest"


class Protection(StrEnum):
    """How the column is protected at rest."""

    #: AES-256-GCM under the case's own key (case_keys), which erasure destroys.
    SEALED_CASE_KEY = "sealed under the case key"
    #: AES-256-GCM under the subject's own key (subject_keys), which erasure destroys.
    SEALED_SUBJECT_KEY = "sealed under the subject key"
    #: AES-256-GCM under the gateway's master key: the row itself is deleted by erasure.
    SEALED_MASTER_KEY = "sealed under the master key"
    #: HMAC-SHA-256 under the gateway's identifier key (DATA_DIR/secrets/identifier.key).
    KEYED_HASH = "keyed hash (HMAC-SHA-256)"
    #: SHA-256 of a value the store does not hold (a link code, a whole request).
    HASH = "hash"
    #: Stored as given; holds no customer data, or is deleted or emptied by erasure.
    CLEAR = "clear"


@dataclass(frozen=True, slots=True)
class Entry:
    holds: Holds
    protection: Protection
    #: How long it is kept.
    kept: str
    #: What erasure of the customer (and a case's retention expiry) does to it.
    erasure: str


_WITH_CASE = "as long as the case (its key is destroyed at retention expiry)"
_WITH_LOG = "for ever (append-only audit log)"
_WITH_CATALOGUE = "while the partner, service or agreement exists"
_KEPT_REF = "kept: a reference that, once the key is destroyed, leads to nothing readable"


def _ref(kept: str = _WITH_CASE, erasure: str = _KEPT_REF) -> Entry:
    return Entry(Holds.REFERENCE, Protection.CLEAR, kept, erasure)


def _org(kept: str = _WITH_CATALOGUE) -> Entry:
    return Entry(Holds.ORGANISATION, Protection.CLEAR, kept, "kept: not personal data")


_DELETED = "row deleted"

INVENTORY: dict[str, Entry] = {
    # -- the catalogue: companies, not people
    "partners.partner_id": _org(),
    "partners.display_name": _org(),
    "services.service_id": _org(),
    "services.definition": _org(),
    "service_components.service_id": _org(),
    "service_components.name": _org(),
    "service_components.partner_id": _org(),
    "sharing_agreements.agreement_id": _org(),
    "sharing_agreements.source_partner_id": _org(),
    "sharing_agreements.recipient_partner_id": _org(),
    "sharing_agreements.service_id": _org(),
    "sharing_agreements.definition": _org(),
    "change_counters.name": _org("for ever (names of counters)"),
    # -- subjects and identity
    "subjects.subject_id": _ref("for ever (a random id; holds nothing once erased)"),
    "subject_links.partner_id": Entry(
        Holds.ORGANISATION, Protection.CLEAR, "while the link exists", _DELETED
    ),
    "subject_links.local_hash": Entry(
        Holds.DIGEST,
        Protection.KEYED_HASH,
        "while the customer is linked (until erasure)",
        _DELETED + " (SQLite: secure_delete zeroes it, the WAL is truncated)",
    ),
    "subject_links.sealed_local_id": Entry(
        Holds.CUSTOMER_ID,
        Protection.SEALED_SUBJECT_KEY,
        "while the customer is linked (until erasure)",
        "subject key destroyed, " + _DELETED + " (SQLite: secure_delete zeroes it, the WAL "
        "is truncated)",
    ),
    "subject_links.subject_id": _ref("while the link exists", _DELETED),
    "subject_keys.subject_id": _ref("for ever (as the subject)"),
    "subject_keys.wrapped_key": Entry(
        Holds.REFERENCE,
        Protection.SEALED_MASTER_KEY,
        "while the customer exists",
        "set to NULL: every local id sealed under it becomes unreadable",
    ),
    "link_codes.code_hash": Entry(Holds.DIGEST, Protection.HASH, "15 minutes of use", _DELETED),
    "link_codes.partner_id": _org("with the code"),
    "link_codes.subject_id": _ref("with the code", _DELETED),
    "identifier_hashes.partner_id": _org("with the identifier"),
    "identifier_hashes.local_hash": Entry(
        Holds.DIGEST, Protection.KEYED_HASH, "while the customer is linked", _DELETED
    ),
    "identifier_hashes.digest": Entry(
        Holds.DIGEST, Protection.KEYED_HASH, "while the customer is linked", _DELETED
    ),
    "match_proposals.match_id": _ref("24 hours, then unusable", _DELETED),
    "match_proposals.partner_id": _org("with the proposal"),
    "match_proposals.local_hash": Entry(
        Holds.DIGEST,
        Protection.KEYED_HASH,
        "with the proposal",
        _DELETED + " (every proposal to or from the customer)",
    ),
    "match_proposals.subject_id": _ref("with the proposal", _DELETED),
    "match_proposals.matched_on": Entry(
        Holds.REFERENCE, Protection.CLEAR, "with the proposal", _DELETED
    ),
    # -- cases
    "cases.case_id": _ref(),
    "cases.service_id": _org(_WITH_CASE),
    "cases.subject_id": _ref(),
    "cases.first_contact_partner_id": _org(_WITH_CASE),
    "cases.summary": Entry(
        Holds.CUSTOMER_DATA, Protection.SEALED_CASE_KEY, _WITH_CASE, "key destroyed: unreadable"
    ),
    "cases.relationship_owner_id": _org(_WITH_CASE),
    "case_keys.case_id": _ref(),
    "case_keys.wrapped_key": Entry(
        Holds.REFERENCE,
        Protection.SEALED_MASTER_KEY,
        _WITH_CASE,
        "set to NULL: every sealed value of the case becomes unreadable",
    ),
    "case_participants.case_id": _ref(),
    "case_participants.partner_id": _org(_WITH_CASE),
    "case_participants.person_id": Entry(
        Holds.STAFF_ID, Protection.CLEAR, _WITH_CASE, "emptied (the advisor's id)"
    ),
    "case_events.case_id": _ref(),
    "case_events.source_partner_id": _org(_WITH_CASE),
    "case_events.category": _org(_WITH_CASE),
    "case_events.item": Entry(
        Holds.CUSTOMER_DATA,
        Protection.SEALED_CASE_KEY,
        _WITH_CASE,
        "key destroyed: unreadable (interactions, findings, notes, decisions)",
    ),
    "case_events.dedup_key": _ref(),
    "case_resolutions.case_id": _ref(erasure=_DELETED),
    "case_resolutions.resolution_id": _ref(erasure=_DELETED),
    "case_resolutions.partner_id": _org(_WITH_CASE),
    "case_resolutions.sealed_text": Entry(
        Holds.CUSTOMER_DATA,
        Protection.SEALED_CASE_KEY,
        _WITH_CASE,
        "key destroyed, " + _DELETED + " (the owner's resolution)",
    ),
    "workflow_starts.case_id": _ref(
        "until the case's workflow is started (seconds)",
        erasure="row deleted once the workflow is started (an erased case's ends at once)",
    ),
    "case_kpis.case_id": _ref(),
    "case_kpis.service_id": _org(_WITH_CASE),
    "case_kpis.details": Entry(
        Holds.ORGANISATION,
        Protection.CLEAR,
        "for ever (statistics: partner ids and durations only)",
        "kept: not personal data",
    ),
    # -- idempotency: the stored answers of mutating calls
    "idempotency_keys.partner_id": _org("with the key"),
    "idempotency_keys.method": _org("with the key"),
    "idempotency_keys.idempotency_key": _ref("with the key", "kept (chosen by the partner)"),
    "idempotency_keys.request_hash": Entry(
        Holds.DIGEST,
        Protection.HASH,
        "with the key",
        "kept: the SHA-256 of the whole request, so a retry is recognised",
    ),
    "idempotency_keys.subject_id": _ref("with the key", "kept: marks the answer erased"),
    "idempotency_keys.case_id": _ref("with the key", "kept: marks the answer erased"),
    "idempotency_keys.response": Entry(
        Holds.CUSTOMER_DATA,
        Protection.CLEAR,
        "with the key",
        "emptied for every call about the customer or the case (a retry answers "
        "FAILED_PRECONDITION CUSTOMER_ERASED)",
    ),
    # -- consents
    "consents.consent_id": _ref("while the consent exists", _DELETED),
    "consents.subject_id": _ref("while the consent exists", _DELETED),
    "consents.source_partner_id": _org("while the consent exists"),
    "consents.collected_by_partner_id": _org("while the consent exists"),
    "consents.definition": Entry(
        Holds.CUSTOMER_DATA, Protection.CLEAR, "while the consent exists", _DELETED
    ),
    "consent_events.consent_id": _ref("with the consent", _DELETED + " (with the consent)"),
    "consent_events.partner_id": _org("with the consent"),
    "consent_requests.request_id": _ref(erasure=_DELETED),
    "consent_requests.case_id": _ref(erasure=_DELETED),
    "consent_requests.subject_id": _ref(erasure=_DELETED),
    "consent_requests.requested_by_partner_id": _org(_WITH_CASE),
    "consent_requests.relayed_by_partner_id": _org(_WITH_CASE),
    "consent_requests.prompt": Entry(
        Holds.CUSTOMER_ID,
        Protection.SEALED_SUBJECT_KEY,
        _WITH_CASE,
        "subject key destroyed, " + _DELETED + " (the relay's id for the customer, the reason)",
    ),
    "consent_requests.consent_id": _ref(erasure=_DELETED),
    # -- partner work
    "work_items.work_id": _ref("until acknowledged, then as long as the case"),
    "work_items.partner_id": _org("with the item"),
    "work_items.case_id": _ref("with the item", _DELETED),
    "work_items.subject_id": _ref("with the item (erasure notices only)", "kept with the notice"),
    "work_items.item": Entry(
        Holds.CUSTOMER_DATA,
        Protection.CLEAR,
        "until acknowledged, then as long as the case",
        "deleted for the customer's cases. An item naming the partner's id for the "
        "customer is never clear: a diagnosis request, notification or consent prompt is "
        "sealed under the subject key (destroyed), an erasure notice under the master key, "
        "emptied when the partner acknowledges it; the others (offers, case notices) hold "
        "case data, no local id",
    ),
    # -- the audit log: references and hashes only
    "audit_entries.kind": _org(_WITH_LOG),
    "audit_entries.actor_partner_id": _org(_WITH_LOG),
    "audit_entries.subject_id": _ref(_WITH_LOG),
    "audit_entries.case_id": _ref(_WITH_LOG),
    "audit_entries.purpose": _org(_WITH_LOG),
    "audit_entries.decision": _org(_WITH_LOG),
    "audit_entries.canonical": Entry(
        Holds.STAFF_ID,
        Protection.CLEAR,
        _WITH_LOG,
        "kept: ids, the acting advisor, purposes and decisions, never customer data "
        "(the log must stay verifiable)",
    ),
    "audit_nodes.hash": Entry(Holds.DIGEST, Protection.HASH, _WITH_LOG, "kept"),
    "audit_checkpoints.root_hash": Entry(Holds.DIGEST, Protection.HASH, _WITH_LOG, "kept"),
    "audit_checkpoints.note": _org(_WITH_LOG),
}
