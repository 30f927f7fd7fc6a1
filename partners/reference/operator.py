"""Telco A, a mobile operator: lines, SIM cards whose NFC secure element hosts a
payment applet and a transit applet (managed over the air by its trusted
service manager), radio cells, and its store and IVR channels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from coopgate.v1 import admin_pb2

from partners.enums import Channel, FindingStatus
from partners.reference.backend import Company, Diagnosis, Repair, serves
from partners.work import DiagnosisRequest

FAULTS = {
    "payment-applet-locked": "OTA campaign OTA-7731 locked the payment applet on SIM batch B-2291",
    "transit-applet-missing": "the transit applet was never installed on SIM batch B-2291",
    "network-outage": "cell PAR-0456 is down: no data, no over-the-air updates",
}
#: Which secure-element applet each service relies on.
APPLETS = {"nfc-payment": "payment", "transit-pass": "transit"}
BATCH = "B-2291"


@dataclass(slots=True)
class Sim:
    iccid: str
    batch: str
    applets: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Line:
    msisdn: str
    sim: Sim
    cell: str


class OperatorModel:
    """Lines by customer, the SIM batches' applet states, and which cells are down."""

    def __init__(self, faults: frozenset[str]) -> None:
        self.batch_applets = {
            "payment": "locked" if "payment-applet-locked" in faults else "personalised",
            "transit": "missing" if "transit-applet-missing" in faults else "personalised",
        }
        self.cells_down = {"PAR-0456"} if "network-outage" in faults else set()
        self.lines: dict[str, Line] = {}

    def line(self, customer_local_id: str) -> Line:
        """The customer's line (a line is provisioned on first sight: it is a model)."""
        if customer_local_id not in self.lines:
            digits = int(hashlib.sha256(customer_local_id.encode()).hexdigest()[:8], 16)
            sim = Sim(iccid=f"8933{digits:012d}", batch=BATCH)
            self.lines[customer_local_id] = Line(f"+336{digits % 10**8:08d}", sim, "PAR-0456")
        return self.lines[customer_local_id]

    def applet_state(self, applet: str, line: Line | None) -> str:
        if line is not None and applet in line.sim.applets:
            return line.sim.applets[applet]
        return self.batch_applets[applet]

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis:
        applet = next((a for base, a in APPLETS.items() if serves(request.service_id, base)), None)
        if applet is None:
            return Diagnosis(FindingStatus.UNKNOWN, 0.2, detail="no applet serves this service")
        line = self.line(request.customer_local_id) if request.customer_local_id else None
        where = f"line {line.msisdn}" if line else f"SIM batch {BATCH} (customer not linked here)"
        state = self.applet_state(applet, line)
        if state == "locked":
            return Diagnosis(
                FindingStatus.FAULTY,
                0.92,
                "SE_PAYMENT_APPLET_LOCKED",
                f"tsm://campaigns/OTA-7731/batches/{BATCH}",
                f"the {applet} applet on {where} is LOCKED since OTA campaign OTA-7731",
            )
        if state == "missing":
            return Diagnosis(
                FindingStatus.FAULTY,
                0.9,
                "SE_TRANSIT_APPLET_MISSING",
                f"tsm://batches/{BATCH}/applets",
                f"the {applet} applet is not installed on {where}",
            )
        if self.cells_down:
            return Diagnosis(
                FindingStatus.DEGRADED,
                0.5,
                "CELL_OUTAGE",
                "noc://outages/PAR-0456",
                f"{applet} applet personalised, but cell PAR-0456 is down (no OTA)",
            )
        return Diagnosis(
            FindingStatus.OK,
            0.9,
            evidence_ref=f"tsm://batches/{BATCH}/applets/{applet}",
            detail=f"{applet} applet personalised and selectable on {where}",
        )

    def repair(self, diagnosis: Diagnosis) -> Repair | None:
        if diagnosis.fault_code == "SE_PAYMENT_APPLET_LOCKED":
            self.batch_applets["payment"] = "personalised"
            return Repair(
                "Telco A re-personalised the payment applet of the customer's SIM over the air "
                "(OTA job OTA-7731-R); the phone must be restarted once."
            )
        if diagnosis.fault_code == "SE_TRANSIT_APPLET_MISSING":
            self.batch_applets["transit"] = "personalised"
            return Repair("Telco A installed the transit applet on the SIM over the air.")
        if diagnosis.fault_code == "CELL_OUTAGE":
            self.cells_down.clear()
            return Repair("Telco A restored cell PAR-0456.")
        return None


COMPANY = Company(
    kind="operator",
    partner_id="telco-a",
    display_name="Telco A (mobile operator)",
    partner_kind=admin_pb2.PARTNER_KIND_OPERATOR,
    faults=FAULTS,
    expertise=("nfc-payment", "transit-pass"),
    make_model=OperatorModel,
    channel_phrases={
        Channel.STORE: "message for the customer at the Telco A store",
        Channel.IVR: "outbound IVR call",
        Channel.PHONE: "SMS",
    },
)
