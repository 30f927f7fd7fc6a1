"""The vocabulary of data categories and purposes, loaded from TOML configuration.

Purposes refine W3C Data Privacy Vocabulary concepts. A purpose marked
``separate`` (marketing) can only be consented to on its own, so it never
rides on a consent given for incident handling.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from gateway.core.errors import FieldViolation

DEFAULT_PATH = Path(__file__).with_name("vocabulary.toml")


@dataclass(slots=True, frozen=True)
class Purpose:
    name: str
    dpv: str
    description: str
    separate: bool = False


@dataclass(slots=True, frozen=True)
class Vocabulary:
    categories: dict[str, str]
    purposes: dict[str, Purpose]

    @classmethod
    def load(cls, path: Path | None = None) -> Vocabulary:
        data = tomllib.loads((path or DEFAULT_PATH).read_text())
        purposes = {
            name: Purpose(
                name=name,
                dpv=str(spec["dpv"]),
                description=str(spec.get("description", "")),
                separate=bool(spec.get("separate", False)),
            )
            for name, spec in data.get("purposes", {}).items()
        }
        return cls(categories=dict(data.get("categories", {})), purposes=purposes)

    def category_violations(self, field: str, categories: list[str]) -> list[FieldViolation]:
        out = []
        if not categories:
            out.append(FieldViolation(field, "at least one category"))
        for i, c in enumerate(categories):
            if c not in self.categories:
                out.append(FieldViolation(f"{field}[{i}]", f"unknown data category {c!r}"))
        return out

    def purpose_violations(
        self, field: str, purposes: list[str], *, consent: bool = False
    ) -> list[FieldViolation]:
        """Unknown purposes; for a consent also a ``separate`` purpose bundled with others."""
        out = []
        if not purposes:
            out.append(FieldViolation(field, "at least one purpose"))
        for i, p in enumerate(purposes):
            if p not in self.purposes:
                out.append(FieldViolation(f"{field}[{i}]", f"unknown purpose {p!r}"))
        separate = [p for p in purposes if p in self.purposes and self.purposes[p].separate]
        if consent and separate and len(set(purposes)) > 1:
            out.append(
                FieldViolation(
                    field,
                    f"{separate[0]!r} must be consented to on its own, not bundled with "
                    "other purposes",
                )
            )
        return out

    def check_purpose(self, field: str, purpose: str) -> FieldViolation | None:
        if not purpose:
            return FieldViolation(field, "every read declares its purpose")
        if purpose not in self.purposes:
            return FieldViolation(field, f"unknown purpose {purpose!r}")
        return None
