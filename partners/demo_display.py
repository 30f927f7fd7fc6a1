"""What the demo shows beside the story: the faults it injects on purpose, said before
anything happens, and progress while it waits for something to happen."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from rich.console import Console, Group
from rich.panel import Panel
from rich.status import Status
from rich.table import Table
from rich.text import Text

from partners.reference import COMPANIES, Faults


def describe_fault(kind: str, fault: str) -> str:
    """What an injected fault does, in words (model faults from the company's list,
    behaviour faults from `Faults.BEHAVIOUR`)."""
    company = COMPANIES[kind]
    name, _, arg = fault.partition(":")
    if name in company.faults:
        return company.faults[name]
    behaviour = {key.partition("[")[0]: text for key, text in Faults.BEHAVIOUR.items()}
    text = behaviour.get(name, "")
    if arg:  # slow:SECONDS
        text = f"{text.partition(' (default')[0]}: {arg} s"
    return text


def injected_faults(faults: Mapping[str, Sequence[str]]) -> Panel:
    """The faults the demo injects on purpose, said before anything happens: what the
    partners' output marks `injected` is this drill, not an error."""
    table = Table(box=None, show_header=True, pad_edge=False, expand=True)
    table.add_column("partner", no_wrap=True, style="bold")
    table.add_column("injected fault", no_wrap=True)
    table.add_column("what it does", overflow="fold", ratio=1)
    for kind, switched in faults.items():
        for fault in switched:
            table.add_row(COMPANIES[kind].partner_id, fault, describe_fault(kind, fault))
    note = Text(
        "Injected on purpose, so that there is something to find: findings refused, streams "
        "dropped, partners silent or slow below are expected. The partners' output marks "
        "what these faults make them do `injected`.",
        style="italic",
    )
    return Panel(
        Group(note, table),
        title="Injected faults (a drill, not errors)",
        border_style="yellow",
    )


class WaitProgress:
    """What the demo waits for, once a wait lasts a second: on a terminal in the status
    line under the story (with the seconds waited); otherwise as plain lines, the first
    and then one every 10 s."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None
        self._base = ""
        self._said: float | None = None

    @contextlib.contextmanager
    def playing(self, scenario: str) -> Iterator[None]:
        self._base = f"playing {scenario}"
        with self.console.status(f"{self._base}…") as status:
            self._status = status
            try:
                yield
            finally:
                self._status = None

    def update(self, what: str | None, waited: float) -> None:
        """A `Stage.on_wait` observer."""
        if what is None:
            self._said = None
            if self._status is not None:
                self._status.update(f"{self._base}…")
            return
        if waited < 1.0:
            return
        if self.console.is_terminal and self._status is not None:
            self._status.update(f"{self._base}: waiting for {what}… {waited:.0f} s")
        elif self._said is None or waited - self._said >= 10:
            still = "still " if self._said is not None else ""
            self.console.print(
                f"  … {still}waiting for {what} ({waited:.0f} s)", style="dim", markup=False
            )
            self._said = waited
