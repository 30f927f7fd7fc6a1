"""Thermostat maker A: connected thermostats, the cloud relay that carries
commands to them, and their firmware."""

from __future__ import annotations

from coopgate.v1 import admin_pb2

from partners.enums import FindingStatus
from partners.reference.backend import Company, Diagnosis, Repair
from partners.work import DiagnosisRequest

FAULTS = {
    "relay-cert-expired": "the cloud relay's TLS certificate expired: thermostats refuse it",
    "device-offline": "the customer's thermostat has not called home for 6 hours",
}


class ThermostatModel:
    """The relay's certificate and the devices' last contact."""

    def __init__(self, faults: frozenset[str]) -> None:
        self.relay_cert_valid = "relay-cert-expired" not in faults
        self.hours_since_call_home = 6 if "device-offline" in faults else 0

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis:
        if not self.relay_cert_valid:
            return Diagnosis(
                FindingStatus.FAULTY,
                0.85,
                "THERMOSTAT_RELAY_CERT_EXPIRED",
                "relay://eu-west/certificates",
                "the relay's certificate expired at 02:00; thermostats drop every command",
            )
        if self.hours_since_call_home:
            return Diagnosis(
                FindingStatus.DEGRADED,
                0.5,
                "DEVICE_OFFLINE",
                "relay://devices/last-seen",
                f"the thermostat has been silent for {self.hours_since_call_home} h",
            )
        return Diagnosis(
            FindingStatus.OK,
            0.8,
            evidence_ref="relay://devices/last-seen",
            detail="thermostat online, firmware 3.4.1, last command applied",
        )

    def repair(self, diagnosis: Diagnosis) -> Repair | None:
        if diagnosis.fault_code == "THERMOSTAT_RELAY_CERT_EXPIRED":
            self.relay_cert_valid = True
            return Repair(
                "Thermostat maker A renewed the relay certificate; the thermostat reconnected "
                "and applied the pending 'heat on' command."
            )
        return None


COMPANY = Company(
    kind="thermostat",
    partner_id="thermo-a",
    display_name="Thermostat maker A",
    partner_kind=admin_pb2.PARTNER_KIND_DEVICE_MAKER,
    faults=FAULTS,
    expertise=(),
    make_model=ThermostatModel,
)
