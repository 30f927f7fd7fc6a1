"""Internet provider A: the customer's home broadband line and the access
network (DSLAMs) behind it."""

from __future__ import annotations

from coopgate.v1 import admin_pb2

from partners.enums import FindingStatus
from partners.reference.backend import Company, Diagnosis, Repair
from partners.work import DiagnosisRequest

FAULTS = {
    "outage": "the DSLAM serving the customer's street is down",
    "line-flapping": "the customer's line resynchronises every few minutes",
}


class BroadbandModel:
    """Access network state and the line's sync history."""

    def __init__(self, faults: frozenset[str]) -> None:
        self.dslam_up = "outage" not in faults
        self.resyncs_last_hour = 17 if "line-flapping" in faults else 0

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis:
        if not self.dslam_up:
            return Diagnosis(
                FindingStatus.FAULTY,
                0.9,
                "BROADBAND_OUTAGE",
                "noc://dslams/LYO-88",
                "DSLAM LYO-88 is down",
            )
        if self.resyncs_last_hour:
            return Diagnosis(
                FindingStatus.DEGRADED,
                0.55,
                "LINE_FLAPPING",
                "noc://lines/sync",
                f"{self.resyncs_last_hour} resyncs in the last hour",
            )
        return Diagnosis(
            FindingStatus.OK,
            0.85,
            evidence_ref="noc://lines/sync",
            detail="line in sync for 19 days",
        )

    def repair(self, diagnosis: Diagnosis) -> Repair | None:
        if diagnosis.fault_code in ("BROADBAND_OUTAGE", "LINE_FLAPPING"):
            self.dslam_up, self.resyncs_last_hour = True, 0
            return Repair("Internet provider A restored the line.")
        return None


COMPANY = Company(
    kind="isp",
    partner_id="isp-a",
    display_name="Internet provider A",
    partner_kind=admin_pb2.PARTNER_KIND_INTERNET_PROVIDER,
    faults=FAULTS,
    expertise=(),
    make_model=BroadbandModel,
)
