"""`coopgate case open|show|watch|list`: open a case, and the combined case view as an
advisor reads it."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated

import typer
from coopgate.v1 import cases_pb2, cases_pb2_grpc, common_pb2
from google.protobuf import json_format
from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from gateway.cli.client import (
    CaOpt,
    CertOpt,
    DataDirOpt,
    JsonOpt,
    KeyOpt,
    PartnerOpt,
    PlainTable,
    RoleOpt,
    TargetOpt,
    call,
    client_options,
    fold_table,
    new_key,
    print_table,
    progress,
)
from gateway.core.caller import Role

case_app = typer.Typer(no_args_is_help=True, help="The combined, consent-filtered case view.")
out = Console()

PurposeOpt = Annotated[str, typer.Option(help="Why you read: every read declares its purpose.")]


def _enum(enum: object, value: int, prefix: str) -> str:
    name: str = enum.Name(value)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower().replace("_", " ")


def describe(item: cases_pb2.TimelineItem) -> tuple[str, str, str]:
    """(who, what, detail) of one timeline item, for a human."""
    kind = item.WhichOneof("item")
    if kind == "interaction":
        i = item.interaction
        channel = _enum(common_pb2.Channel, i.channel, "CHANNEL_")
        return (
            i.partner_id,
            f"{channel} · {_enum(cases_pb2.AuthorKind, i.author_kind, 'AUTHOR_KIND_')}",
            i.summary,
        )
    if kind == "finding":
        f = item.finding
        status = _enum(cases_pb2.FindingStatus, f.status, "FINDING_STATUS_")
        code = f" {f.fault_code}" if f.fault_code else ""
        return f.partner_id, "finding", f"{f.component}: {status}{code} ({f.confidence:.2f})"
    if kind == "ownership_decision":
        d = item.ownership_decision
        resolvers = ", ".join(d.resolver_ids) or "none"
        return (
            "coopgate",
            f"decision · {d.rule}",
            f"owner {d.relationship_owner_id}, resolvers {resolvers}. {d.explanation}",
        )
    if kind == "notification":
        n = item.notification
        channel = _enum(common_pb2.Channel, n.channel, "CHANNEL_")
        return n.partner_id, f"to customer · {channel}", f"[{n.milestone}] {n.message}"
    if kind == "escalation":
        e = item.escalation
        return "coopgate", "escalation", f"{e.reason} → level-2 expert at {e.expert_partner_id}"
    if kind == "status_change":
        return (
            "coopgate",
            "status",
            _enum(cases_pb2.CaseStatus, item.status_change.status, "CASE_STATUS_"),
        )
    return "?", kind or "?", ""


def render(view: cases_pb2.CaseView) -> Group:
    h = view.header
    head = PlainTable.grid(padding=(0, 2))
    head.add_column(no_wrap=True)
    head.add_column(overflow="fold")  # ids wrap whole at 80 columns, never cut
    head.add_row("case", h.case_id)
    head.add_row("service", h.service_id)
    head.add_row("status", _enum(cases_pb2.CaseStatus, h.status, "CASE_STATUS_"))
    head.add_row("relationship owner", h.relationship_owner_id or "—")
    head.add_row("resolvers", ", ".join(h.resolver_ids) or "—")
    channel = _enum(common_pb2.Channel, h.first_contact_channel, "CHANNEL_")
    head.add_row("first contact", f"{h.first_contact_partner_id} ({channel})")
    if h.customer_local_id:
        head.add_row("customer (your id)", h.customer_local_id)
    else:
        head.add_row("customer (your pseudonym)", h.subject_id)
    if h.HasField("owner_due_at"):
        head.add_row("owner due", h.owner_due_at.ToDatetime().isoformat(timespec="seconds"))
        head.add_row(
            "resolution due", h.resolution_due_at.ToDatetime().isoformat(timespec="seconds")
        )
    timeline = fold_table("#", "time", "who", "what", "detail", expand=True)
    for item in view.timeline:
        who, what, detail = describe(item)
        timeline.add_row(
            str(item.sequence),
            item.occurred_at.ToDatetime().strftime("%H:%M:%S"),
            who,
            what,
            detail,
        )
    parts: list[object] = [Panel(head, title="case"), timeline]
    if view.withheld:
        lines = Text(
            "Withheld by the consent rules (ask for consent to see them):\n", style="yellow"
        )
        for w in view.withheld:
            lines.append(f"  {w.count} x {w.category} from {w.source_partner_id}\n")
        parts.append(lines)
    return Group(*parts)  # type: ignore[arg-type]


@case_app.command("open")
def open_case(
    partner: PartnerOpt,
    service: Annotated[str, typer.Option(help="The composite service (e.g. nfc-payment).")],
    customer: Annotated[str, typer.Option(help="The customer, as your partner knows them.")],
    summary: Annotated[str, typer.Option(help="What the customer says is wrong.")],
    channel: Annotated[str, typer.Option(help="Channel the customer used.")] = "phone",
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Open a case for a customer who contacted you; prints its id (every company of the
    service's chain is then asked to diagnose)."""
    try:
        channel_value = common_pb2.Channel.Value(f"CHANNEL_{channel.upper()}")
    except ValueError:
        names = common_pb2.Channel.keys()[1:]
        choices = ", ".join(n.removeprefix("CHANNEL_").lower() for n in names)
        raise typer.BadParameter(f"unknown channel {channel!r} (one of: {choices})") from None
    options = client_options(data_dir, partner, role, target, cert, key, ca)
    request = cases_pb2.OpenCaseRequest(
        idempotency_key=new_key(),
        service_id=service,
        customer_local_id=customer,
        channel=channel_value,
        summary=summary,
    )

    async def go() -> cases_pb2.OpenCaseResponse:
        async with options.channel() as channel_:
            return await cases_pb2_grpc.CaseServiceStub(channel_).OpenCase(request)

    print(call(go()).case_id)


@case_app.command("show")
def show(
    case_id: Annotated[str, typer.Argument(help="The case.")],
    partner: PartnerOpt,
    purpose: PurposeOpt = "incident-resolution",
    as_json: JsonOpt = False,
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """The combined view of a case for your partner and purpose."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)

    async def go() -> cases_pb2.CaseView:
        async with options.channel() as channel:
            response = await cases_pb2_grpc.CaseServiceStub(channel).GetCaseView(
                cases_pb2.GetCaseViewRequest(case_id=case_id, purpose=purpose)
            )
            return response.view

    view = call(go())
    if as_json:
        out.print_json(json_format.MessageToJson(view))
    else:
        out.print(render(view))


@case_app.command("watch")
def watch(
    case_id: Annotated[str, typer.Argument(help="The case.")],
    partner: PartnerOpt,
    purpose: PurposeOpt = "incident-resolution",
    after: Annotated[int, typer.Option(help="Resume after this sequence.")] = 0,
    as_json: JsonOpt = False,
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Follow a case live until it closes (Ctrl-C to stop)."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)

    async def go() -> None:
        async with options.channel() as channel:
            stream = cases_pb2_grpc.CaseServiceStub(channel).WatchCase(
                cases_pb2.WatchCaseRequest(case_id=case_id, purpose=purpose, after_sequence=after)
            )
            async for response in stream:
                progress.clear()
                if as_json:
                    print(json_format.MessageToJson(response, indent=None), flush=True)
                else:
                    who, what, detail = describe(response.item)
                    at = response.item.occurred_at.ToDatetime().strftime("%H:%M:%S")
                    seq = response.item.sequence
                    out.print(f"[dim]{seq:>4} {at}[/dim] [bold]{who}[/bold] {what}: {detail}")
                progress.waiting("the next event on the case (Ctrl-C ends the watch)")

    with contextlib.suppress(KeyboardInterrupt):
        call(go(), waiting=None)


@case_app.command("list")
def list_cases(
    partner: PartnerOpt,
    customer: Annotated[str | None, typer.Option(help="Your customer id.")] = None,
    subject: Annotated[
        str | None, typer.Option(help="The customer's subject id (as you see it).")
    ] = None,
    purpose: Annotated[
        str | None,
        typer.Option(help="With a customer: their history across partners, for this purpose."),
    ] = None,
    service: Annotated[str | None, typer.Option(help="Only this service.")] = None,
    as_json: JsonOpt = False,
    role: RoleOpt = Role.ADVISOR,
    data_dir: DataDirOpt = None,
    target: TargetOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    ca: CaOpt = None,
) -> None:
    """Cases you take part in, or one customer's history."""
    options = client_options(data_dir, partner, role, target, cert, key, ca)

    async def go() -> list[cases_pb2.CaseHeader]:
        found: list[cases_pb2.CaseHeader] = []
        token = ""
        async with options.channel() as channel:
            stub = cases_pb2_grpc.CaseServiceStub(channel)
            while True:
                page = await stub.ListCases(
                    cases_pb2.ListCasesRequest(
                        customer_local_id=customer or "",
                        subject_id=subject or "",
                        purpose=purpose or "",
                        service_id=service or "",
                        page=common_pb2.PageRequest(page_size=100, page_token=token),
                    )
                )
                found += page.cases
                token = page.next_page_token
                if not token:
                    return found

    headers = call(go())
    if as_json:
        out.print_json(json.dumps([json.loads(json_format.MessageToJson(h)) for h in headers]))
        return
    table = fold_table("case", "service", "status", "owner", "first contact", "opened")
    for h in headers:
        table.add_row(
            h.case_id,
            h.service_id,
            _enum(cases_pb2.CaseStatus, h.status, "CASE_STATUS_"),
            h.relationship_owner_id or "—",
            h.first_contact_partner_id,
            h.opened_at.ToDatetime().isoformat(timespec="seconds"),
        )
    print_table(out, table, empty="no cases")
