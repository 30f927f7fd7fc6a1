"""Acquirer A: the merchants' payment terminals with their contactless readers,
and the acquiring host that logs every attempt a terminal makes."""

from __future__ import annotations

from dataclasses import dataclass

from coopgate.v1 import admin_pb2

from partners.enums import FindingStatus
from partners.reference.backend import Company, Diagnosis, Repair
from partners.work import DiagnosisRequest

FAULTS = {
    "terminal-offline": "terminal T-4471 at the restaurant lost its connection to the host",
    "reader-fault": "the contactless reader of terminal T-4471 reports hardware errors",
}


@dataclass(slots=True)
class Terminal:
    terminal_id: str
    merchant: str
    online: bool
    reader: str
    contactless_ok_last_hour: int


class AcquirerModel:
    """The terminal fleet of the merchants it acquires for."""

    def __init__(self, faults: frozenset[str]) -> None:
        self.terminals = {
            "T-4471": Terminal(
                "T-4471",
                "Restaurant Le Zinc",
                online="terminal-offline" not in faults,
                reader="error" if "reader-fault" in faults else "ok",
                contactless_ok_last_hour=14,
            ),
            "T-4472": Terminal("T-4472", "Restaurant Le Zinc", True, "ok", 9),
        }

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis:
        down = [t for t in self.terminals.values() if not t.online]
        if down:
            return Diagnosis(
                FindingStatus.FAULTY,
                0.8,
                "TERMINAL_OFFLINE",
                f"host://terminals/{down[0].terminal_id}",
                f"terminal {down[0].terminal_id} at {down[0].merchant} is offline",
            )
        broken = [t for t in self.terminals.values() if t.reader != "ok"]
        if broken:
            return Diagnosis(
                FindingStatus.FAULTY,
                0.85,
                "CONTACTLESS_READER_ERROR",
                f"host://terminals/{broken[0].terminal_id}/reader",
                f"the contactless reader of {broken[0].terminal_id} reports errors",
            )
        accepted = sum(t.contactless_ok_last_hour for t in self.terminals.values())
        return Diagnosis(
            FindingStatus.OK,
            0.8,
            evidence_ref="host://merchants/le-zinc/contactless?last=1h",
            detail=f"{len(self.terminals)} terminals online, {accepted} contactless payments "
            "accepted in the last hour; 2 phone taps aborted at SELECT AID",
        )

    def repair(self, diagnosis: Diagnosis) -> Repair | None:
        for terminal in self.terminals.values():
            terminal.online, terminal.reader = True, "ok"
        if diagnosis.fault_code in ("TERMINAL_OFFLINE", "CONTACTLESS_READER_ERROR"):
            return Repair("Acquirer A swapped the restaurant's terminal T-4471.")
        return None


COMPANY = Company(
    kind="acquirer",
    partner_id="acquirer-a",
    display_name="Acquirer A (merchant payments)",
    partner_kind=admin_pb2.PARTNER_KIND_ACQUIRER,
    faults=FAULTS,
    expertise=("nfc-payment",),
    make_model=AcquirerModel,
)
