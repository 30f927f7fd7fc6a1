"""How the demo tells the scenarios on a terminal (rich): chapters, steps, case
views as an advisor reads them, ownership decisions with their reasons, and the
reference partners' own output, one colour per company."""

from __future__ import annotations

import datetime as dt
import itertools

from coopgate.v1 import cases_pb2
from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from partners.enums import CaseStatus, Channel, ParticipantRole
from partners.scenarios.timeline import GATEWAY, describe

_COLOURS = (
    "cyan",
    "magenta",
    "green",
    "yellow",
    "blue",
    "bright_red",
    "bright_cyan",
    "bright_green",
)
_KIND_STYLE = {
    "interaction": "bold",
    "finding": "yellow",
    "ownership decision": "bold magenta",
    "notification": "green",
    "escalation": "bold red",
    "status change": "dim",
}


class RichNarrator:
    """A ``partners.scenarios.Narrator`` printing to a rich console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._colours: dict[str, str] = {}
        self._palette = itertools.cycle(_COLOURS)

    def colour(self, partner: str) -> str:
        if partner not in self._colours:
            self._colours[partner] = next(self._palette)
        return self._colours[partner]

    def partner_line(self, partner: str, line: str) -> None:
        """One line a reference partner printed."""
        style = self.colour(partner)
        self.console.print(
            Text.assemble(("  ", ""), (f"{partner:>13} │ ", style), (line, "dim")), soft_wrap=True
        )

    def chapter(self, title: str, story: str) -> None:
        self.console.print()
        self.console.print(Rule(f"[bold]{escape(title)}[/bold]"))
        self.console.print(f"[italic]{escape(story)}[/italic]", justify="center")

    def step(self, text: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        self.console.print(f"[bold blue]▶[/bold blue] [dim]{stamp}[/dim] {escape(text)}")

    def decision(self, decision: cases_pb2.OwnershipDecision) -> None:
        resolvers = ", ".join(decision.resolver_ids) or "none"
        body = Text.assemble(
            ("relationship owner  ", "bold"),
            (decision.relationship_owner_id, "bold magenta"),
            ("\nresolvers           ", "bold"),
            (resolvers, "bold yellow"),
            ("\nrule                ", "bold"),
            (decision.rule, ""),
            ("\nwhy                 ", "bold"),
            (decision.explanation, ""),
        )
        self.console.print(Panel(body, title="Ownership decision", border_style="magenta"))

    def view(
        self, title: str, view: cases_pb2.CaseView, *, reader: str, only_from: str = ""
    ) -> None:
        header = view.header
        table = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, pad_edge=False)
        table.add_column("#", justify="right", style="dim", no_wrap=True)
        table.add_column("time", style="dim", no_wrap=True)
        table.add_column("from", no_wrap=True)
        table.add_column("what", no_wrap=True)
        table.add_column("", ratio=1)
        for item in view.timeline:
            line = describe(item)
            if only_from and line.source != only_from:
                continue
            source_style = "dim" if line.source == GATEWAY else self.colour(line.source)
            table.add_row(
                str(line.sequence),
                line.at,
                Text(line.source, style=source_style),
                Text(line.kind, style=_KIND_STYLE.get(line.kind, "")),
                escape(line.text),
            )
        hidden = [
            f"{w.count} x {w.category} from {w.source_partner_id}"
            for w in view.withheld
            if not only_from or w.source_partner_id == only_from
        ]
        summary = Text.assemble(
            ("case ", "dim"),
            (header.case_id, "bold"),
            ("  service ", "dim"),
            (header.service_id, ""),
            ("  status ", "dim"),
            (CaseStatus.of(header.status).name, "bold"),
            ("\nowner ", "dim"),
            (header.relationship_owner_id or "—", "bold magenta"),
            ("  resolvers ", "dim"),
            (", ".join(header.resolver_ids) or "—", "bold yellow"),
            ("  first contact ", "dim"),
            (
                f"{header.first_contact_partner_id} by "
                f"{Channel.of(header.first_contact_channel).name}",
                "",
            ),
            ("\nparticipants ", "dim"),
            (_participants(view), ""),
        )
        if only_from:
            summary = Text.assemble(("only items from ", "dim"), (only_from, "bold"))
        parts: list[Text | Table] = [summary, table]
        parts.append(
            Text(
                "withheld by consent: " + ("; ".join(hidden) if hidden else "nothing"),
                style="red" if hidden else "green",
            )
        )
        self.console.print(
            Panel(
                Group(*parts),
                title=f"{escape(title)} — as {escape(reader)} sees it",
                border_style="blue",
            )
        )


def _participants(view: cases_pb2.CaseView) -> str:
    roles: dict[str, list[str]] = {}
    for p in view.participants:
        role = ParticipantRole.of(p.role).label
        who = f"{p.partner_id} ({p.person_id})" if p.person_id else p.partner_id
        roles.setdefault(role, []).append(who)
    return "; ".join(f"{role}: {', '.join(who)}" for role, who in roles.items())
