"""Reference partner backends: one module per company, each a small model of
its own systems with faults to switch on, run by ``python -m partners.reference``."""

from partners.reference import (
    acquirer,
    bank,
    broadband,
    energy,
    handset,
    operator,
    thermostat,
    transport,
)
from partners.reference.backend import (
    Company,
    CompanyModel,
    Diagnosis,
    Faults,
    OwnershipPolicy,
    ReferenceBackend,
    Repair,
    Shown,
)

#: Every company a reference backend can play, by kind.
COMPANIES: dict[str, Company] = {
    c.kind: c
    for c in (
        operator.COMPANY,
        bank.COMPANY,
        acquirer.COMPANY,
        handset.COMPANY,
        transport.COMPANY,
        energy.COMPANY,
        thermostat.COMPANY,
        broadband.COMPANY,
    )
}


def company(name: str) -> Company:
    """A company by kind (``operator``) or by its catalogue partner id (``telco-a``)."""
    for c in COMPANIES.values():
        if name in (c.kind, c.partner_id):
            return c
    raise KeyError(name)


__all__ = [
    "COMPANIES",
    "Company",
    "CompanyModel",
    "Diagnosis",
    "Faults",
    "OwnershipPolicy",
    "ReferenceBackend",
    "Repair",
    "Shown",
    "company",
]
