"""The demo says which faults it injects on purpose before anything happens, so that a
newcomer tells the drill from a failure."""

from __future__ import annotations

import io

from rich.console import Console

from partners.demo import Plan
from partners.demo_display import WaitProgress, describe_fault, injected_faults
from partners.reference import COMPANIES
from partners.scenarios import SCENARIOS


def test_every_injected_fault_is_listed_and_described_at_80_columns() -> None:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(injected_faults(Plan.of([]).faults))
    text = console.export_text()
    assert "Injected faults (a drill, not errors)" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    squeezed = " ".join(text.split())
    for scenario in SCENARIOS.values():
        for kind, faults in scenario.faults.items():
            for fault in faults:
                assert COMPANIES[kind].partner_id in text
                assert fault in text
                described = describe_fault(kind, fault)
                assert described
                assert described.split()[0] in squeezed
    assert describe_fault("thermostat", "slow:2.5").endswith(": 2.5 s")
    assert describe_fault("isp", "silent") == "never answer diagnosis requests or ownership offers"


def test_the_demo_says_what_it_waits_for_after_a_second() -> None:
    shown = io.StringIO()
    waits = WaitProgress(Console(file=shown, width=120))
    waits.update("the ownership decision", 0.4)
    assert shown.getvalue() == ""
    waits.update("the ownership decision", 1.2)
    waits.update("the ownership decision", 5.0)
    waits.update("the ownership decision", 11.5)
    waits.update(None, 11.7)
    waits.update("the case to close", 1.1)
    assert shown.getvalue().splitlines() == [
        "  … waiting for the ownership decision (1 s)",
        "  … still waiting for the ownership decision (12 s)",
        "  … waiting for the case to close (1 s)",
    ]
