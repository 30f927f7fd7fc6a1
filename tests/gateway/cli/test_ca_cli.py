"""`coopgate ca issue` names only partners the registry knows, unless told otherwise."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import insert

from gateway.store import create_store, migrate
from gateway.store.schema import partners
from tests.helpers import run_coopgate


async def _registry_with(data_dir: Path, partner_id: str) -> None:
    data_dir.mkdir(parents=True)
    store = create_store(f"sqlite:///{(data_dir / 'coopgate.db').resolve()}")
    try:
        await migrate(store)
        async with store.write() as conn:
            await conn.execute(
                insert(partners).values(
                    partner_id=partner_id,
                    display_name="New Co",
                    kind=1,
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
    finally:
        await store.close()


async def test_ca_issue_refuses_a_partner_unknown_to_the_registry(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    await _registry_with(data_dir, "newco-a")
    issue = ("ca", "issue", "--role", "partner", "--data-dir", str(data_dir))
    assert (await run_coopgate("ca", "init", "--data-dir", str(data_dir)))[0] == 0

    code, out, err = await run_coopgate(*issue, "--partner", "bnak-a")
    assert code == 2, (out, err)
    said = " ".join(err.split())
    assert "partner 'bnak-a' is unknown to the registry" in said
    assert "Did you mean 'bank-a'?" in said
    assert "--unregistered" in said
    assert not (data_dir / "pki" / "clients" / "bnak-a-partner.pem").exists()

    # Registered in the data dir's store, or in the reference catalogue: issued.
    for partner in ("newco-a", "bank-a"):
        code, out, err = await run_coopgate(*issue, "--partner", partner)
        assert code == 0, err
        assert (data_dir / "pki" / "clients" / f"{partner}-partner.pem").exists()

    code, out, err = await run_coopgate(*issue, "--partner", "bnak-a", "--unregistered")
    assert code == 0, err
    assert (data_dir / "pki" / "clients" / "bnak-a-partner.pem").exists()
