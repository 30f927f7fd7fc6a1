"""Energy supplier A: the heating commands it sends to the customer's thermostat
through the thermostat maker's cloud, and the smart meter's consumption readings."""

from __future__ import annotations

from coopgate.v1 import admin_pb2

from partners.enums import Channel, FindingStatus
from partners.reference.backend import Company, Diagnosis, Repair
from partners.work import DiagnosisRequest

FAULTS = {
    "command-queue-stalled": "the heating command queue stopped sending to the thermostat cloud",
    "meter-readings-missing": "the smart meter sent no consumption reading for 2 days",
}


class EnergyModel:
    """The command queue towards thermostats and the meter readings."""

    def __init__(self, faults: frozenset[str]) -> None:
        self.queue_running = "command-queue-stalled" not in faults
        self.minutes_since_reading = 2880 if "meter-readings-missing" in faults else 14

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis:
        if not self.queue_running:
            return Diagnosis(
                FindingStatus.FAULTY,
                0.85,
                "HEATING_COMMAND_QUEUE_STALLED",
                "hems://queues/thermostat-commands",
                "no heating command left the queue for 3 h",
            )
        if self.minutes_since_reading > 60:
            return Diagnosis(
                FindingStatus.DEGRADED,
                0.4,
                "METER_READINGS_MISSING",
                "mdm://meters/readings",
                f"last consumption reading {self.minutes_since_reading // 60} h ago",
            )
        return Diagnosis(
            FindingStatus.OK,
            0.85,
            evidence_ref="hems://commands?last=2h",
            detail="3 'heat on' commands accepted by the thermostat cloud (HTTP 202), none "
            f"acknowledged by the device; last meter reading {self.minutes_since_reading} min ago",
        )

    def repair(self, diagnosis: Diagnosis) -> Repair | None:
        if diagnosis.fault_code == "HEATING_COMMAND_QUEUE_STALLED":
            self.queue_running = True
            return Repair("Energy A restarted the heating command queue.")
        return None


COMPANY = Company(
    kind="energy",
    partner_id="energy-a",
    display_name="Energy supplier A",
    partner_kind=admin_pb2.PARTNER_KIND_ENERGY,
    faults=FAULTS,
    expertise=("smart-heating",),
    make_model=EnergyModel,
    channel_phrases={Channel.APP: "push in the energy app", Channel.PHONE: "SMS"},
)
