"""`coopgate audit`: the audit log for compliance officers and anyone who verifies.

`query`, `export`, `checkpoint`, `prove` and `subject-report` ask the gateway over
mTLS. The `verify-*` commands (`gateway.cli.audit_verify`) are offline checks for
someone who does not trust the gateway: they use only what is on the command line and
in the files named there.
Exit 0 when a command or check succeeds, 1 when a check fails, an argument or file
is malformed or the gateway refuses, 2 on a usage error.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Annotated, TypeVar

import typer
from coopgate.v1 import audit_pb2, audit_pb2_grpc, common_pb2
from google.protobuf import json_format
from rich.console import Console

from gateway.audit.export import ExportedEntry
from gateway.audit.kinds import DECISIONS, KINDS
from gateway.audit.note import Checkpoint, NoteError
from gateway.cli.audit_verify import _fail, audit_app
from gateway.cli.client import (
    CaOpt,
    CertOpt,
    ClientOptions,
    DataDirOpt,
    JsonOpt,
    KeyOpt,
    PartnerOpt,
    RoleOpt,
    TargetOpt,
    call,
    client_options,
    fold_table,
    print_table,
)
from gateway.core.caller import Role

#: The `audit` group: the offline verifiers (`audit_verify`) and the commands below.
__all__ = ["audit_app"]


# -- commands that ask the gateway ----------------------------------------------------

out = Console()

EXPORT_PAGE = 1000
E = TypeVar("E", bound=int)


def _choice(option: str, value: str | None, choices: Mapping[str, E], unset: E) -> E:
    if value is None:
        return unset
    if value not in choices:
        raise typer.BadParameter(
            f"{value!r} is not one of: {', '.join(choices)}", param_hint=option
        )
    return choices[value]


def _time_range(since: str | None, until: str | None) -> common_pb2.TimeRange:
    """ISO 8601 bounds, [since, until); a time without a zone is UTC."""
    time_range = common_pb2.TimeRange()
    for option, value, field in (("--since", since, "start"), ("--until", until, "end")):
        if value is None:
            continue
        try:
            at = dt.datetime.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not an ISO 8601 time", param_hint=option
            ) from None
        getattr(time_range, field).FromDatetime(at if at.tzinfo else at.replace(tzinfo=dt.UTC))
    return time_range


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _pages(
    options: ClientOptions, request: audit_pb2.QueryAuditRequest, limit: int | None
) -> list[audit_pb2.AuditEntry]:
    """Every entry the query matches, page by page (at most `limit`)."""

    async def go() -> list[audit_pb2.AuditEntry]:
        found: list[audit_pb2.AuditEntry] = []
        async with options.channel() as channel:
            stub = audit_pb2_grpc.AuditServiceStub(channel)
            while limit is None or len(found) < limit:
                page = await stub.QueryAudit(request)
                found += page.entries
                if not page.next_page_token:
                    break
                request.page.page_token = page.next_page_token
        return found if limit is None else found[:limit]

    return call(go())


@audit_app.command("query")
def query_command(
    partner: PartnerOpt,
    subject: Annotated[str | None, typer.Option(help="Internal subject id.")] = None,
    actor: Annotated[str | None, typer.Option("--partner", help="The partner who acted.")] = None,
    case: Annotated[str | None, typer.Option(help="Case id.")] = None,
    purpose: Annotated[str | None, typer.Option(help="Declared purpose.")] = None,
    decision: Annotated[str | None, typer.Option(help="allow or deny.")] = None,
    kind: Annotated[str | None, typer.Option(help=f"One of: {', '.join(KINDS)}.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time on, ISO 8601.")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time, ISO 8601.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many entries.")] = None,
    as_json: JsonOpt = False,
    role: RoleOpt = Role.COMPLIANCE,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """List audit entries matching every filter given, oldest first (compliance role)."""
    request = audit_pb2.QueryAuditRequest(
        page=common_pb2.PageRequest(page_size=min(limit or EXPORT_PAGE, EXPORT_PAGE)),
        subject_id=subject or "",
        partner_id=actor or "",
        case_id=case or "",
        purpose=purpose or "",
        decision=_choice("--decision", decision, DECISIONS, audit_pb2.DECISION_UNSPECIFIED),
        kind=_choice("--kind", kind, KINDS, audit_pb2.AUDIT_KIND_UNSPECIFIED),
        time_range=_time_range(since, until),
    )
    options = client_options(data_dir, partner, role, target, cert, key, ca)
    entries = _pages(options, request, limit)
    if as_json:
        typer.echo(json.dumps([json_format.MessageToDict(e) for e in entries], indent=2))
        return
    table = fold_table(
        "index", "at", "kind", "actor", "subject", "case", "purpose", "decision", "why"
    )
    for e in entries:
        table.add_row(
            str(e.index),
            e.recorded_at.ToJsonString(),
            audit_pb2.AuditKind.Name(e.kind).removeprefix("AUDIT_KIND_").lower(),
            e.actor_partner_id,
            e.subject_id[:12],
            e.case_id,
            e.purpose,
            audit_pb2.Decision.Name(e.decision).removeprefix("DECISION_").lower(),
            e.reason or ", ".join(e.categories),
        )
    print_table(out, table, empty="no audit entries match")


@audit_app.command("export")
def export_command(
    partner: PartnerOpt,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of to stdout.")
    ] = None,
    size: Annotated[
        int | None, typer.Option(min=0, help="Only entries 0..SIZE-1, e.g. a checkpoint's size.")
    ] = None,
    role: RoleOpt = Role.COMPLIANCE,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Write the log's entries as JSON Lines (index, canonical bytes, leaf hash), the input
    of `verify-log`."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)
    request = audit_pb2.QueryAuditRequest(page=common_pb2.PageRequest(page_size=EXPORT_PAGE))
    entries = _pages(options, request, size) if size != 0 else []
    if size is not None and len(entries) < size:
        _fail(f"the log holds {len(entries)} entries, fewer than --size {size}")

    def write(sink: IO[str]) -> None:
        for e in entries:
            sink.write(ExportedEntry(e.index, e.canonical, e.leaf_hash).to_line() + "\n")

    if out_file is None:
        write(typer.get_text_stream("stdout"))
    else:
        try:
            with out_file.open("w", encoding="utf-8") as sink:
                write(sink)
        except OSError as exc:
            _fail(f"cannot write {out_file}: {exc.strerror}")
        typer.echo(f"{len(entries)} entries written to {out_file}", err=True)


def _fetch_checkpoint(options: ClientOptions) -> audit_pb2.GetCheckpointResponse:
    async def go() -> audit_pb2.GetCheckpointResponse:
        async with options.channel() as channel:
            return await audit_pb2_grpc.AuditServiceStub(channel).GetCheckpoint(
                audit_pb2.GetCheckpointRequest()
            )

    return call(go())


@audit_app.command("checkpoint")
def checkpoint_command(
    partner: PartnerOpt,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the signed note here, not to stdout.")
    ] = None,
    key_out: Annotated[
        Path | None, typer.Option("--key-out", help="Write the gateway's verifier key here.")
    ] = None,
    role: RoleOpt = Role.COMPLIANCE,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Fetch the latest signed checkpoint (the gateway signs a fresh one if the log grew)."""
    response = _fetch_checkpoint(client_options(data_dir, partner, role, target, cert, key, ca))
    try:
        if out_file is not None:
            out_file.write_text(response.signed_note, encoding="utf-8")
        if key_out is not None:
            key_out.write_text(response.verifier_key + "\n", encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {exc.filename}: {exc.strerror}")
    if out_file is None:
        typer.echo(response.signed_note, nl=False)
    typer.echo(
        f"size {response.tree_size}, root {_b64(response.root_hash)}\n"
        f"verifier key: {response.verifier_key}",
        err=True,
    )


def _checkpoint_file(file: Path) -> Checkpoint:
    """What a saved checkpoint says; its signature is for `verify-checkpoint` to judge."""
    try:
        note = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}")
    split = note.rfind("\n\n")
    try:
        return Checkpoint.parse(note[: split + 1] if split >= 0 else note)
    except NoteError as exc:
        _fail(f"{file}: {exc}")


@audit_app.command("prove")
def prove_command(
    partner: PartnerOpt,
    index: Annotated[int, typer.Option(min=0, help="The entry's index.")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Prove against this saved checkpoint (default: the latest)."),
    ] = None,
    role: RoleOpt = Role.COMPLIANCE,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Print an inclusion proof of one entry as the arguments of `verify-proof inclusion`."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)
    if checkpoint is not None:
        saved = _checkpoint_file(checkpoint)
        size, root = saved.size, saved.root_hash
    else:
        latest = _fetch_checkpoint(options)
        size, root = latest.tree_size, latest.root_hash

    async def go() -> audit_pb2.GetInclusionProofResponse:
        async with options.channel() as channel:
            return await audit_pb2_grpc.AuditServiceStub(channel).GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(index=index, tree_size=size)
            )

    proof = call(go())
    args = [
        *("--index", str(proof.index), "--size", str(proof.tree_size)),
        *("--leaf-hash", _b64(proof.leaf_hash), "--root", _b64(root)),
    ]
    for hash_ in proof.proof:
        args += ["--proof", _b64(hash_)]
    typer.echo(" ".join(args))


@audit_app.command("subject-report")
def subject_report_command(
    partner: PartnerOpt,
    subject: Annotated[
        str | None, typer.Argument(help="A subject id (compliance: internal; partner: pseudonym).")
    ] = None,
    customer: Annotated[
        str | None, typer.Option(help="Your customer, as your partner knows them.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="From this time on, ISO 8601.")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time, ISO 8601.")] = None,
    as_json: JsonOpt = False,
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """GDPR art. 15: which partners received which of the customer's data, when, why,
    under which consent and agreement."""
    if (subject is None) == (customer is None):
        raise typer.BadParameter("give either SUBJECT or --customer", param_hint="--customer")
    options = client_options(data_dir, partner, role, target, cert, key, ca)
    request = audit_pb2.SubjectAccessReportRequest(
        customer_local_id=customer or "",
        subject_id=subject or "",
        time_range=_time_range(since, until),
    )

    async def go() -> audit_pb2.SubjectAccessReportResponse:
        async with options.channel() as channel:
            return await audit_pb2_grpc.AuditServiceStub(channel).SubjectAccessReport(request)

    disclosures = call(go()).disclosures
    if as_json:
        typer.echo(json.dumps([json_format.MessageToDict(d) for d in disclosures], indent=2))
        return
    table = fold_table("at", "to", "from", "categories", "purpose", "consent", "agreement", "case")
    for d in disclosures:
        table.add_row(
            d.at.ToJsonString(),
            d.recipient_partner_id,
            d.source_partner_id,
            ", ".join(d.categories),
            d.purpose,
            d.consent_id,
            d.agreement_id,
            d.case_id,
        )
    print_table(out, table, empty="no disclosures found")
