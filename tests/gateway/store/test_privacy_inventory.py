"""The inventory of personal data at rest covers the schema, and docs/PRIVACY.md
names every entry: a new column that can hold text or bytes fails here until it
is classified (gateway/store/privacy.py) and described (docs/PRIVACY.md)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import JSON, LargeBinary, String, Text

from gateway.store.privacy import INVENTORY, Holds, Protection
from gateway.store.schema import metadata

PAGE = Path(__file__).resolve().parents[3] / "docs" / "PRIVACY.md"


def _text_columns() -> set[str]:
    return {
        f"{table.name}.{column.name}"
        for table in metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, String | Text | LargeBinary | JSON)
    }


def test_every_text_or_binary_column_is_in_the_inventory() -> None:
    missing = sorted(_text_columns() - INVENTORY.keys())
    assert not missing, f"classify these columns in gateway/store/privacy.py: {missing}"


def test_every_entry_is_a_column_of_the_schema() -> None:
    columns = {f"{t.name}.{c.name}" for t in metadata.tables.values() for c in t.columns}
    stale = sorted(INVENTORY.keys() - columns)
    assert not stale, f"no such columns (remove them from the inventory): {stale}"


def test_the_page_names_every_entry() -> None:
    page = PAGE.read_text(encoding="utf-8")
    unnamed = sorted(name for name in INVENTORY if f"`{name}`" not in page)
    assert not unnamed, f"docs/PRIVACY.md does not name: {unnamed}"


def test_customer_data_is_sealed_or_reached_by_erasure() -> None:
    for name, entry in INVENTORY.items():
        if entry.holds in (Holds.CUSTOMER_DATA, Holds.CUSTOMER_ID):
            assert (
                entry.protection in (Protection.SEALED_CASE_KEY, Protection.SEALED_SUBJECT_KEY)
                or "deleted" in entry.erasure
                or "emptied" in entry.erasure
            ), f"{name}: erasure leaves it readable ({entry.erasure})"


def test_no_customer_id_is_stored_in_clear() -> None:
    """Partners' ids for their customers are found by keyed hash and kept sealed (issue 18)."""
    for name, entry in INVENTORY.items():
        if entry.holds is Holds.CUSTOMER_ID:
            assert entry.protection in (
                Protection.KEYED_HASH,
                Protection.SEALED_CASE_KEY,
                Protection.SEALED_SUBJECT_KEY,
            ), f"{name}: a customer id in clear"
