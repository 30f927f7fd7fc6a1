"""`coopgate consent …` and `coopgate agreement …`: consent and sharing
agreements from the command line, over the gateway's gRPC API."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from coopgate.v1 import admin_pb2, admin_pb2_grpc, common_pb2, consents_pb2, consents_pb2_grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import json_format
from rich.console import Console

from gateway.cli.client import (
    CaOpt,
    CertOpt,
    DataDirOpt,
    JsonOpt,
    KeyOpt,
    PartnerOpt,
    RoleOpt,
    TargetOpt,
    call,
    client_options,
    fold_table,
    new_key,
    print_table,
)
from gateway.consent.receipts import ReceiptError, verify_receipt
from gateway.core.caller import Role

consent_app = typer.Typer(no_args_is_help=True, help="Customer consents and their receipts.")
agreement_app = typer.Typer(no_args_is_help=True, help="Sharing agreements between partners.")
out = Console()
err = Console(stderr=True)


def _channel_value(name: str) -> int:
    try:
        return common_pb2.Channel.Value(f"CHANNEL_{name.upper()}")
    except ValueError:
        choices = ", ".join(
            n.removeprefix("CHANNEL_").lower() for n in common_pb2.Channel.keys()[1:]
        )
        raise typer.BadParameter(f"unknown channel {name!r} (one of: {choices})") from None


def _print_json(message: object) -> None:
    out.print_json(json_format.MessageToJson(message))  # type: ignore[arg-type]


@consent_app.command("grant")
def grant(
    partner: PartnerOpt,
    customer: Annotated[str, typer.Option(help="The customer, as your partner knows them.")],
    source: Annotated[str, typer.Option(help="Partner holding the data.")],
    to: Annotated[list[str], typer.Option("--to", help="Recipient partner (repeatable).")],
    category: Annotated[list[str], typer.Option(help="Data category (repeatable).")],
    purpose: Annotated[list[str], typer.Option(help="Purpose (repeatable).")],
    channel: Annotated[str, typer.Option(help="Channel the customer used.")] = "phone",
    notice: Annotated[str, typer.Option(help="Version of the notice shown.")] = "v1",
    until: Annotated[str | None, typer.Option(help="End of validity, ISO 8601.")] = None,
    request_id: Annotated[str | None, typer.Option(help="Consent request answered.")] = None,
    receipt_out: Annotated[Path | None, typer.Option(help="Write the signed receipt here.")] = None,
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Record a consent the customer gave through your channel."""
    request = consents_pb2.GrantConsentRequest(
        idempotency_key=new_key(),
        customer_local_id=customer,
        source_partner_id=source,
        recipient_partner_ids=to,
        categories=category,
        purposes=purpose,
        channel=_channel_value(channel),  # type: ignore[arg-type]
        notice_version=notice,
        consent_request_id=request_id or "",
    )
    if until:
        request.valid_until.FromDatetime(dt.datetime.fromisoformat(until))
    options = client_options(data_dir, partner, role, target, cert, key, ca)

    async def go() -> consents_pb2.GrantConsentResponse:
        async with options.channel() as ch:
            return await consents_pb2_grpc.ConsentServiceStub(ch).GrantConsent(request)

    response = call(go())
    _print_json(response.consent)
    if receipt_out:
        receipt_out.write_text(response.receipt.jws + "\n")
        err.print(f"receipt written to {receipt_out}")


@consent_app.command("revoke")
def revoke(
    consent_id: Annotated[str, typer.Argument(help="The consent to withdraw.")],
    partner: PartnerOpt,
    channel: Annotated[str, typer.Option(help="Channel the customer used.")] = "phone",
    receipt_out: Annotated[Path | None, typer.Option(help="Write the signed receipt here.")] = None,
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Record the customer's withdrawal; takes effect on the very next read."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)
    request = consents_pb2.RevokeConsentRequest(
        idempotency_key=new_key(),
        consent_id=consent_id,
        channel=_channel_value(channel),  # type: ignore[arg-type]
    )

    async def go() -> consents_pb2.RevokeConsentResponse:
        async with options.channel() as ch:
            return await consents_pb2_grpc.ConsentServiceStub(ch).RevokeConsent(request)

    response = call(go())
    _print_json(response.consent)
    if receipt_out:
        receipt_out.write_text(response.receipt.jws + "\n")
        err.print(f"receipt written to {receipt_out}")


@consent_app.command("list")
def list_consents(
    partner: PartnerOpt,
    customer: Annotated[str | None, typer.Option(help="Your customer id.")] = None,
    as_json: JsonOpt = False,
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """List a customer's consents that involve you (compliance: all)."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)

    async def go() -> list[consents_pb2.Consent]:
        found: list[consents_pb2.Consent] = []
        token = ""
        async with options.channel() as ch:
            stub = consents_pb2_grpc.ConsentServiceStub(ch)
            while True:
                page = await stub.ListConsents(
                    consents_pb2.ListConsentsRequest(
                        customer_local_id=customer or "",
                        page=common_pb2.PageRequest(page_size=200, page_token=token),
                    )
                )
                found += page.consents
                token = page.next_page_token
                if not token:
                    return found

    consents = call(go())
    if as_json:
        out.print_json(json.dumps([json.loads(json_format.MessageToJson(c)) for c in consents]))
        return
    table = fold_table("consent", "state", "source → recipients", "categories", "purposes", "until")
    for c in consents:
        table.add_row(
            c.consent_id,
            consents_pb2.ConsentState.Name(c.state).removeprefix("CONSENT_STATE_").lower(),
            f"{c.source_partner_id} → {', '.join(c.recipient_partner_ids)}",
            ", ".join(c.categories),
            ", ".join(c.purposes),
            c.valid_until.ToJsonString() if c.HasField("valid_until") else "-",
        )
    print_table(out, table, empty="no consents")


@consent_app.command("request")
def request_consent(
    partner: PartnerOpt,
    case: Annotated[str, typer.Option(help="The case where data is withheld.")],
    source: Annotated[str, typer.Option(help="Partner holding the data.")],
    category: Annotated[list[str], typer.Option(help="Data category (repeatable).")],
    purpose: Annotated[list[str], typer.Option(help="Purpose (repeatable).")],
    reason: Annotated[str, typer.Option(help="What the customer is told.")] = "",
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Ask the customer, through the relationship owner's channel, for consent."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)
    request = consents_pb2.RequestConsentRequest(
        idempotency_key=new_key(),
        case_id=case,
        source_partner_id=source,
        categories=category,
        purposes=purpose,
        reason=reason,
    )

    async def go() -> consents_pb2.RequestConsentResponse:
        async with options.channel() as ch:
            return await consents_pb2_grpc.ConsentServiceStub(ch).RequestConsent(request)

    _print_json(call(go()))


@consent_app.command("receipt-key")
def receipt_key(
    partner: PartnerOpt,
    key_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="jwk (JSON Web Key, RFC 8037), pem (SubjectPublicKeyInfo) or base64 (raw key).",
        ),
    ] = "jwk",
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Print the gateway's receipt-signing public key, to publish or keep."""
    if key_format not in ("jwk", "pem", "base64"):
        raise typer.BadParameter(f"unknown format {key_format!r} (one of: jwk, pem, base64)")
    options = client_options(data_dir, partner, role, target, cert, key, ca)

    async def go() -> consents_pb2.GetReceiptKeyResponse:
        async with options.channel() as ch:
            return await consents_pb2_grpc.ConsentServiceStub(ch).GetReceiptKey(
                consents_pb2.GetReceiptKeyRequest()
            )

    response = call(go())
    if key_format == "jwk":
        print(response.jwk)
    elif key_format == "pem":
        public = Ed25519PublicKey.from_public_bytes(response.public_key)
        print(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode().strip())
    else:
        print(base64.b64encode(response.public_key).decode())


def _key_text(key: str) -> str:
    """The key given as text (a JWK, PEM or base64), or read from the file it names."""
    text = key.strip()
    if text.startswith(("{", "-----BEGIN")):
        return text
    path = Path(key)
    return path.read_text() if path.is_file() else text


@consent_app.command("verify-receipt")
def verify_receipt_command(
    file: Annotated[
        Path, typer.Argument(help="A receipt (JWS compact) as written by grant/revoke.")
    ],
    key: Annotated[
        str,
        typer.Option(
            "--key",
            help="The gateway's public key (as `receipt-key` prints it: JWK, PEM or base64), "
            "or a file holding it.",
        ),
    ],
) -> None:
    """Verify a consent receipt offline with the gateway's published key."""
    try:
        claims = verify_receipt(file.read_text(), _key_text(key))
    except (ReceiptError, ValueError, OSError) as exc:
        err.print(f"[red]INVALID[/red]: {exc}")
        raise typer.Exit(1) from None
    receipt_id = claims.get("jti")
    out.print(
        f"[green]VALID[/green] receipt {receipt_id + ' ' if receipt_id else ''}"
        f"for consent {claims['consent_id']} ({claims['event']})"
    )
    out.print_json(json.dumps(claims))


@agreement_app.command("define")
def define_agreement(
    partner: PartnerOpt,
    source: Annotated[str, typer.Option(help="Partner sharing the data.")],
    recipient: Annotated[str, typer.Option(help="Partner receiving it.")],
    service: Annotated[str, typer.Option(help="Service the agreement covers.")],
    category: Annotated[list[str], typer.Option(help="Data category (repeatable).")],
    purpose: Annotated[list[str], typer.Option(help="Purpose (repeatable).")],
    agreement_id: Annotated[str | None, typer.Option("--id", help="Redefine this one.")] = None,
    until: Annotated[str | None, typer.Option(help="End of validity, ISO 8601.")] = None,
    role: RoleOpt = Role.ADMIN,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Define (or redefine) a sharing agreement. Needs an admin certificate."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)
    agreement = admin_pb2.SharingAgreement(
        agreement_id=agreement_id or "",
        source_partner_id=source,
        recipient_partner_id=recipient,
        service_id=service,
        categories=category,
        purposes=purpose,
    )
    if until:
        agreement.valid_until.FromDatetime(dt.datetime.fromisoformat(until))

    async def go() -> admin_pb2.DefineSharingAgreementResponse:
        async with options.channel() as ch:
            return await admin_pb2_grpc.AdminServiceStub(ch).DefineSharingAgreement(
                admin_pb2.DefineSharingAgreementRequest(
                    idempotency_key=new_key(), agreement=agreement
                )
            )

    _print_json(call(go()).agreement)


@agreement_app.command("list")
def list_agreements(
    partner: PartnerOpt,
    service: Annotated[str | None, typer.Option(help="Only this service.")] = None,
    involving: Annotated[str | None, typer.Option(help="Only this partner.")] = None,
    as_json: JsonOpt = False,
    role: RoleOpt = Role.ADMIN,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """List sharing agreements."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)

    async def go() -> admin_pb2.ListSharingAgreementsResponse:
        async with options.channel() as ch:
            return await admin_pb2_grpc.AdminServiceStub(ch).ListSharingAgreements(
                admin_pb2.ListSharingAgreementsRequest(
                    service_id=service or "", partner_id=involving or ""
                )
            )

    agreements = call(go()).agreements
    if as_json:
        out.print_json(json.dumps([json.loads(json_format.MessageToJson(a)) for a in agreements]))
        return
    table = fold_table("agreement", "service", "source → recipient", "categories", "purposes")
    for a in agreements:
        table.add_row(
            a.agreement_id,
            a.service_id,
            f"{a.source_partner_id} → {a.recipient_partner_id}",
            ", ".join(a.categories),
            ", ".join(a.purposes),
        )
    print_table(out, table, empty="no sharing agreements")
