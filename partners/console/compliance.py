"""The compliance officer's pages: audit search and export, the latest signed
checkpoint verified with a pinned key (and consistent with the ones seen before), an
inclusion proof for any entry, the consistency of two checkpoints, and the printable
data-subject access report. Every call acts as the signed-in officer."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator

from coopgate.v1 import audit_pb2
from google.protobuf.json_format import MessageToDict
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

import partners.console.proofs as proofs
from partners.client import PartnerClient
from partners.console.web import Console, console_of, require

KINDS = {
    name.removeprefix("AUDIT_KIND_").lower().replace("_", "-"): value
    for name, value in audit_pb2.AuditKind.items()
    if value
}
DECISIONS = {"allow": audit_pb2.DECISION_ALLOW, "deny": audit_pb2.DECISION_DENY}
SHOWN = 200
EXPORTED = 100_000


def _filters(request: Request) -> dict[str, str]:
    q = request.query_params
    names = ("subject", "partner", "case", "purpose", "decision", "kind", "since", "until")
    return {name: q.get(name, "")[:128].strip() for name in names}


def _time(value: str, name: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(400, f"{name} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def _query(client: PartnerClient, f: dict[str, str]) -> AsyncIterator[audit_pb2.AuditEntry]:
    if f["decision"] and f["decision"] not in DECISIONS:
        raise HTTPException(400, "decision is allow or deny")
    if f["kind"] and f["kind"] not in KINDS:
        raise HTTPException(400, f"kind is one of {', '.join(KINDS)}")
    return client.query_audit(
        subject_id=f["subject"],
        partner_id=f["partner"],
        case_id=f["case"],
        purpose=f["purpose"],
        decision=DECISIONS.get(f["decision"], audit_pb2.DECISION_UNSPECIFIED),
        kind=KINDS.get(f["kind"], audit_pb2.AUDIT_KIND_UNSPECIFIED),
        since=_time(f["since"], "since"),
        until=_time(f["until"], "until"),
    )


def entry_row(entry: audit_pb2.AuditEntry) -> dict[str, str]:
    kind = audit_pb2.AuditKind.Name(entry.kind).removeprefix("AUDIT_KIND_")
    decision = audit_pb2.Decision.Name(entry.decision).removeprefix("DECISION_")
    return {
        "index": str(entry.index),
        "at": entry.recorded_at.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "kind": kind.lower().replace("_", "-"),
        "actor": entry.actor_partner_id,
        "person": entry.actor_person_id,
        "subject": entry.subject_id,
        "case": entry.case_id,
        "purpose": entry.purpose,
        "categories": ", ".join(entry.categories),
        "decision": "" if decision == "UNSPECIFIED" else decision.lower(),
        "reason": entry.reason,
    }


async def audit_search(request: Request) -> Response:
    person = require(request, "compliance")
    console = console_of(request)
    f = _filters(request)
    rows: list[dict[str, str]] = []
    more = False
    if any(f.values()) or request.query_params.get("all"):
        async for entry in _query(console.as_person(person), f):
            if len(rows) >= SHOWN:
                more = True
                break
            rows.append(entry_row(entry))
    return console.page(
        request,
        "audit.html",
        f=f,
        rows=rows,
        more=more,
        kinds=list(KINDS),
        searched=bool(rows) or any(f.values()),
        export=str(request.url.include_query_params(all="1")).partition("?")[2],
    )


async def audit_export(request: Request) -> Response:
    """The matching entries as JSON Lines (with their canonical bytes, for re-hashing)."""
    person = require(request, "compliance")
    client = console_of(request).as_person(person)
    entries = _query(client, _filters(request))

    async def lines() -> AsyncIterator[str]:
        count = 0
        async for entry in entries:
            count += 1
            if count > EXPORTED:
                return
            yield json.dumps(MessageToDict(entry), sort_keys=True) + "\n"

    return StreamingResponse(
        lines(),
        media_type="application/jsonl",
        headers={"content-disposition": 'attachment; filename="audit.jsonl"'},
    )


async def _verified_checkpoint(console: Console, client: PartnerClient) -> proofs.Checkpoint:
    """The latest checkpoint, its signature checked with the pinned key, and consistent
    with the largest one this console verified before."""
    response = await client.get_checkpoint()
    if not console.verifier_key:
        console.verifier_key = response.verifier_key  # trust on first use, then pinned
    key = proofs.VerifierKey.parse(console.verifier_key)
    checkpoint = proofs.open_checkpoint(response.signed_note, key)
    earlier = [size for size in console.checkpoints if size <= checkpoint.size]
    if earlier:
        size1 = max(earlier)
        proof = await client.get_consistency_proof(size1, checkpoint.size)
        proofs.check_consistency(
            size1, checkpoint.size, list(proof.proof), console.checkpoints[size1], checkpoint.root
        )
    console.checkpoints[checkpoint.size] = checkpoint.root
    return checkpoint


async def checkpoint_page(request: Request) -> Response:
    person = require(request, "compliance")
    console = console_of(request)
    client = console.as_person(person)
    error, checkpoint, note = "", None, ""
    try:
        checkpoint = await _verified_checkpoint(console, client)
    except proofs.ProofFailed as exc:
        error = str(exc)
    note = (await client.get_checkpoint()).signed_note if error else ""
    return console.page(
        request,
        "checkpoint.html",
        checkpoint=checkpoint,
        root=base64.b64encode(checkpoint.root).decode() if checkpoint else "",
        error=error,
        note=note,
        key=console.verifier_key,
        seen=sorted(console.checkpoints, reverse=True)[:20],
    )


async def inclusion_page(request: Request) -> Response:
    person = require(request, "compliance")
    console = console_of(request)
    client = console.as_person(person)
    index = _int(request.path_params["index"], "index")
    checkpoint = await _verified_checkpoint(console, client)
    error = ""
    if index >= checkpoint.size:
        raise HTTPException(404, f"entry {index} is not in the log of {checkpoint.size} entries")
    proof = await client.get_inclusion_proof(index, checkpoint.size)
    try:
        proofs.check_inclusion(
            proof.leaf_hash, index, checkpoint.size, list(proof.proof), checkpoint.root
        )
    except proofs.ProofFailed as exc:
        error = str(exc)
    return console.page(
        request,
        "inclusion.html",
        index=index,
        checkpoint=checkpoint,
        leaf=base64.b64encode(proof.leaf_hash).decode(),
        hashes=[base64.b64encode(h).decode() for h in proof.proof],
        error=error,
    )


def _int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number") from None
    if number < 0:
        raise HTTPException(400, f"{name} must not be negative")
    return number


async def consistency_page(request: Request) -> Response:
    person = require(request, "compliance")
    console = console_of(request)
    client = console.as_person(person)
    latest = await _verified_checkpoint(console, client)
    q = request.query_params
    result, error = "", ""
    size1 = _int(q["size1"], "size1") if q.get("size1") else 0
    size2 = _int(q["size2"], "size2") if q.get("size2") else latest.size
    if size1:
        if size1 not in console.checkpoints or size2 not in console.checkpoints:
            error = "Both sizes must be checkpoints this console verified (listed below)."
        else:
            proof = await client.get_consistency_proof(size1, size2)
            try:
                proofs.check_consistency(
                    size1,
                    size2,
                    list(proof.proof),
                    console.checkpoints[size1],
                    console.checkpoints[size2],
                )
                result = (
                    f"The log of {size2} entries extends the log of {size1}: "
                    "nothing was changed or removed."
                )
            except proofs.ProofFailed as exc:
                error = str(exc)
    return console.page(
        request,
        "consistency.html",
        size1=size1,
        size2=size2,
        result=result,
        error=error,
        seen=sorted(console.checkpoints),
    )


async def subject_report(request: Request) -> Response:
    person = require(request, "compliance")
    console = console_of(request)
    q = request.query_params
    subject = q.get("subject", "")[:128].strip()
    report = None
    if subject:
        report = await console.as_person(person).subject_access_report(subject_id=subject)
    rows = []
    for d in report.disclosures if report else ():
        rows.append(
            {
                "at": d.at.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "recipient": d.recipient_partner_id,
                "source": d.source_partner_id,
                "categories": ", ".join(d.categories),
                "purpose": d.purpose,
                "consent": d.consent_id,
                "agreement": d.agreement_id,
                "case": d.case_id,
            }
        )
    erasures = [
        {
            "at": e.at.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "action": audit_pb2.ErasureAction.Name(e.action)
            .removeprefix("ERASURE_ACTION_")
            .lower(),
            "partner": e.partner_id,
            "cases": ", ".join(e.case_ids),
        }
        for e in (report.erasures if report else ())
    ]
    return console.page(
        request,
        "subject.html",
        subject=subject,
        rows=rows,
        erasures=erasures,
        asked=report is not None,
        printed=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/audit", audit_search),
        Route("/audit/export", audit_export),
        Route("/audit/checkpoint", checkpoint_page),
        Route("/audit/entries/{index}", inclusion_page),
        Route("/audit/consistency", consistency_page),
        Route("/audit/subject", subject_report),
    ]
