"""Transport authority A: transit passes held in the phone's secure element,
the validators at each gate, and the log of refused taps."""

from __future__ import annotations

from dataclasses import dataclass

from coopgate.v1 import admin_pb2

from partners.enums import Channel, FindingStatus
from partners.reference.backend import Company, Diagnosis, Repair
from partners.work import DiagnosisRequest

FAULTS = {
    "pass-expired": "the customer's monthly pass expired yesterday",
    "gate-validator-fault": "the validators of gate 12 at Gare Centrale cannot read any medium",
}


@dataclass(slots=True)
class Gate:
    gate_id: str
    station: str
    validators_ok: bool
    refused_taps_today: int


class TransportModel:
    """Passes by customer and the gates of the network."""

    def __init__(self, faults: frozenset[str]) -> None:
        self.pass_valid_until = "2024-05-31" if "pass-expired" in faults else "2031-12-31"
        self.gates = {
            "G12": Gate("G12", "Gare Centrale", "gate-validator-fault" not in faults, 3),
        }

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis:
        gate = self.gates["G12"]
        if not gate.validators_ok:
            return Diagnosis(
                FindingStatus.FAULTY,
                0.8,
                "GATE_VALIDATOR_READ_ERROR",
                "afc://gates/G12/validators",
                f"the validators of gate {gate.gate_id} at {gate.station} read nothing",
            )
        if self.pass_valid_until < "2025":
            return Diagnosis(
                FindingStatus.FAULTY,
                0.95,
                "PASS_EXPIRED",
                "afc://passes",
                f"the pass expired on {self.pass_valid_until}",
            )
        return Diagnosis(
            FindingStatus.OK,
            0.85,
            evidence_ref=f"afc://gates/{gate.gate_id}/refusals?today",
            detail=f"pass valid until {self.pass_valid_until}; gate {gate.gate_id} logged "
            f"{gate.refused_taps_today} refused taps 'no medium detected' (the phone was not seen)",
        )

    def repair(self, diagnosis: Diagnosis) -> Repair | None:
        if diagnosis.fault_code == "GATE_VALIDATOR_READ_ERROR":
            self.gates["G12"].validators_ok = True
            return Repair("Transport A replaced the validators of gate 12.", Channel.STORE)
        if diagnosis.fault_code == "PASS_EXPIRED":
            self.pass_valid_until = "2031-12-31"
            return Repair("Transport A renewed the pass.", Channel.STORE)
        return None


COMPANY = Company(
    kind="transport",
    partner_id="transit-a",
    display_name="Transport authority A",
    partner_kind=admin_pb2.PARTNER_KIND_TRANSPORT,
    faults=FAULTS,
    expertise=("transit-pass",),
    make_model=TransportModel,
    channel_phrases={
        Channel.APP: "push in the transit app",
        Channel.STORE: "message for the ticket-office agent",
    },
)
