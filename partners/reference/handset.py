"""Handset maker A: the NFC stack firmware on its phones, the known issues of
each firmware version, and the service that pushes firmware updates."""

from __future__ import annotations

from coopgate.v1 import admin_pb2

from partners.enums import FindingStatus
from partners.reference.backend import Company, Diagnosis, Repair, serves
from partners.work import DiagnosisRequest

FAULTS = {
    "firmware-regression": "NFC firmware 7.1.3, with an ISO 14443-B polling regression, "
    "is rolled out to the fleet",
    "hce-routing-bug": "NFC firmware 7.0.9, which routes payment AIDs away from the SIM, "
    "is rolled out to the fleet",
}
#: Firmware version → (what it breaks, issue id, description).
KNOWN_ISSUES = {
    "7.1.3": ("iso14443-b", "NFC-1182", "ISO 14443-B polling regression"),
    "7.0.9": ("aid-routing", "NFC-1077", "payment AIDs routed to host card emulation"),
}
#: What each service needs from the NFC stack.
NEEDS = {"transit-pass": "iso14443-b", "nfc-payment": "aid-routing"}
HOTFIX = "7.1.4"


class HandsetModel:
    """The firmware the fleet runs and what each version is known to break."""

    def __init__(self, faults: frozenset[str]) -> None:
        if "firmware-regression" in faults:
            self.fleet_firmware = "7.1.3"
        elif "hce-routing-bug" in faults:
            self.fleet_firmware = "7.0.9"
        else:
            self.fleet_firmware = "7.1.2"

    def diagnose(self, request: DiagnosisRequest) -> Diagnosis:
        need = next((n for base, n in NEEDS.items() if serves(request.service_id, base)), None)
        issue = KNOWN_ISSUES.get(self.fleet_firmware)
        if issue is not None and issue[0] == need:
            return Diagnosis(
                FindingStatus.FAULTY,
                0.88,
                f"NFC_FW_{issue[1].replace('-', '_')}",
                f"fw://{self.fleet_firmware}/known-issues/{issue[1]}",
                f"firmware {self.fleet_firmware} has {issue[1]}: {issue[2]}",
            )
        return Diagnosis(
            FindingStatus.OK,
            0.8,
            evidence_ref=f"fw://{self.fleet_firmware}/known-issues",
            detail=f"firmware {self.fleet_firmware} has no known issue affecting this service",
        )

    def repair(self, diagnosis: Diagnosis) -> Repair | None:
        if not diagnosis.fault_code.startswith("NFC_FW_"):
            return None
        self.fleet_firmware = HOTFIX
        return Repair(
            f"Handset maker A pushed NFC firmware {HOTFIX} (fixes the known issue) to the phone."
        )


COMPANY = Company(
    kind="handset",
    partner_id="handset-a",
    display_name="Handset maker A",
    partner_kind=admin_pb2.PARTNER_KIND_DEVICE_MAKER,
    faults=FAULTS,
    expertise=(),
    make_model=HandsetModel,
)
