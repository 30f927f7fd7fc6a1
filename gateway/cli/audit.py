"""`coopgate audit`: the audit log for compliance officers and anyone who verifies.

`query`, `export`, `checkpoint`, `prove` and `subject-report` ask the gateway over
mTLS. The `verify-*` commands are offline checks for someone who does not trust the
gateway: they use only what is on the command line and in the files named there.
Exit 0 when a command or check succeeds, 1 when a check fails, an argument or file
is malformed or the gateway refuses, 2 on a usage error.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Annotated, NoReturn, TypeVar

import typer
from coopgate.v1 import audit_pb2, audit_pb2_grpc, common_pb2
from google.protobuf import json_format
from rich.console import Console

from gateway.audit.export import ExportedEntry, ReplayError, replay
from gateway.audit.kinds import DECISIONS, KINDS
from gateway.audit.merkle import HASH_SIZE, ProofError, verify_consistency, verify_inclusion
from gateway.audit.note import Checkpoint, NoteError, Verifier, open_note
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

audit_app = typer.Typer(
    no_args_is_help=True,
    help="Query and export the audit log; check its proofs and checkpoints offline.",
)
verify_proof_app = typer.Typer(
    no_args_is_help=True, help="Verify a Merkle proof; hashes are standard base64."
)
audit_app.add_typer(verify_proof_app, name="verify-proof")

Proof = Annotated[
    list[str] | None,
    typer.Option(
        "--proof", help="One proof hash; repeat in proof order (none for an empty proof)."
    ),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _hash(what: str, value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        _fail(f"{what} is not valid base64: {value!r}")
    if len(raw) != HASH_SIZE:
        _fail(f"{what} is {len(raw)} bytes, want {HASH_SIZE}")
    return raw


def _proof(values: list[str] | None) -> list[bytes]:
    return [_hash(f"--proof #{n}", value) for n, value in enumerate(values or [], start=1)]


@verify_proof_app.command("inclusion")
def verify_inclusion_command(
    index: Annotated[int, typer.Option(help="The leaf's index, from 0.")],
    size: Annotated[int, typer.Option(help="The size of the tree the root is for.")],
    leaf_hash: Annotated[str, typer.Option(help="The leaf hash, SHA-256(0x00 || entry).")],
    root: Annotated[str, typer.Option(help="The tree's root hash.")],
    proof: Proof = None,
) -> None:
    """Check that a leaf is in the tree of a given size and root."""
    leaf, root_hash, hashes = _hash("--leaf-hash", leaf_hash), _hash("--root", root), _proof(proof)
    try:
        verify_inclusion(leaf, index, size, hashes, root_hash)
    except ProofError as exc:
        _fail(f"inclusion proof does not verify: {exc}")
    typer.echo(f"OK: leaf {index} is in the tree of size {size} with root {root}")


@verify_proof_app.command("consistency")
def verify_consistency_command(
    size1: Annotated[int, typer.Option(help="The older tree size.")],
    size2: Annotated[int, typer.Option(help="The newer tree size.")],
    root1: Annotated[str, typer.Option(help="The older tree's root hash.")],
    root2: Annotated[str, typer.Option(help="The newer tree's root hash.")],
    proof: Proof = None,
) -> None:
    """Check that the older tree is a prefix of the newer one (the log only appended)."""
    old, new, hashes = _hash("--root1", root1), _hash("--root2", root2), _proof(proof)
    try:
        verify_consistency(size1, size2, hashes, old, new)
    except ProofError as exc:
        _fail(f"consistency proof does not verify: {exc}")
    typer.echo(f"OK: the tree of size {size1} is a prefix of the tree of size {size2}")


VerifierKeyOpt = Annotated[
    list[str],
    typer.Option(
        "--key",
        help="A trusted verifier key (name+keyid+key, as `checkpoint` prints it), or a file "
        "holding it (as `checkpoint --key-out` writes it); repeat for several.",
    ),
]


@audit_app.command("verify-checkpoint")
def verify_checkpoint_command(
    file: Annotated[Path, typer.Argument(help="The signed checkpoint note.")],
    key: VerifierKeyOpt,
) -> None:
    """Check a signed checkpoint against verifier keys and print what it commits to."""
    checkpoint = _verified_checkpoint(file, key)
    root = base64.b64encode(checkpoint.root_hash).decode()
    typer.echo(f"origin: {checkpoint.origin}\nsize: {checkpoint.size}\nroot: {root}")


@audit_app.command("verify-log")
def verify_log_command(
    export: Annotated[Path, typer.Argument(help="JSON Lines written by `coopgate audit export`.")],
    key: VerifierKeyOpt,
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="The signed checkpoint the export must match.")
    ],
) -> None:
    """Replay an export against a signed checkpoint: recompute every leaf, rebuild the tree,
    and name the first entry that was edited, deleted, moved, inserted or cut off."""
    signed = _verified_checkpoint(checkpoint, key)
    try:
        with export.open(encoding="utf-8", errors="strict") as lines:
            result = replay(lines, signed)
    except OSError as exc:
        _fail(f"cannot read {export}: {exc.strerror}")
    except UnicodeDecodeError:
        _fail(f"{export} is not UTF-8 text")
    except ReplayError as exc:
        _fail(f"{export} does not match the checkpoint: {exc}")
    root = base64.b64encode(signed.root_hash).decode()
    if result.newer:
        typer.echo(
            f"note: {result.newer} entries after index {result.covered - 1} are newer than "
            "the checkpoint and not covered by it",
            err=True,
        )
    covered = f"entries 0..{result.covered - 1}" if result.covered else "no entries"
    typer.echo(f"OK: {covered} match checkpoint {signed.origin} size {signed.size} root {root}")


def _verified_checkpoint(file: Path, keys: list[str]) -> Checkpoint:
    """The checkpoint in a signed note, once a trusted key's signature on it verifies."""
    try:
        verifiers = [Verifier.from_key(vkey) for key in keys for vkey in _key_texts(key)]
    except NoteError as exc:
        _fail(f"--key: {exc}")
    try:
        note = file.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    try:
        body, _ = open_note(note, verifiers)
        return Checkpoint.parse(body)
    except NoteError as exc:
        _fail(f"{file}: {exc}")


def _key_texts(key: str) -> list[str]:
    """The verifier key given as text, or the keys (one a line) in the file it names."""
    text = key.strip()
    if _VERIFIER_KEY.fullmatch(text):
        return [text]
    path = Path(key)
    if not path.is_file():
        return [text]  # not a key, not a file: `Verifier.from_key` says what is wrong
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"--key: cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    keys = [line.strip() for line in lines if line.strip()]
    if not keys:
        _fail(f"--key: {path} holds no key")
    return keys


#: The shape of a verifier key given as text (`Verifier.from_key` checks the rest).
_VERIFIER_KEY = re.compile(r"[^+\s]+\+[0-9a-f]{8}\+\S+")


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
