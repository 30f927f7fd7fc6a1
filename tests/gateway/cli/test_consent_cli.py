"""`coopgate consent …` and `coopgate agreement …` as a user runs them, against
the running gateway over mTLS; receipts verified offline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from coopgate.v1 import admin_pb2, cases_pb2, common_pb2

from gateway.core.caller import Role
from tests.conftest import Stack
from tests.helpers import client_args
from tests.helpers import run_coopgate as run


async def test_grant_verify_list_revoke_from_the_command_line(
    stack: Stack, unique: Callable[[str], str], tmp_path: Path
) -> None:
    admin = stack.api("coopgate", Role.ADMIN)
    nfc = (
        await admin.admin.GetService(admin_pb2.GetServiceRequest(service_id="nfc-payment"))
    ).service
    nfc.service_id = unique("nfc")
    await admin.admin.DefineService(
        admin_pb2.DefineServiceRequest(idempotency_key=unique("k"), service=nfc)
    )
    customer = unique("cust")
    await stack.api("bank-a", Role.ADVISOR).cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id=nfc.service_id,
            customer_local_id=customer,
            channel=common_pb2.CHANNEL_PHONE,
            summary="phone payment refused",
        )
    )
    code, out, err = await run(
        "agreement", "define", *client_args(stack, "coopgate", Role.ADMIN),
        "--source", "telco-a", "--recipient", "bank-a", "--service", nfc.service_id,
        "--category", "device.sim", "--purpose", "incident-resolution",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["serviceId"] == nfc.service_id

    receipt = tmp_path / "receipt.jws"
    code, out, err = await run(
        "consent", "grant", *client_args(stack, "bank-a", Role.ADVISOR),
        "--customer", customer, "--source", "telco-a", "--to", "bank-a",
        "--category", "device.sim", "--purpose", "incident-resolution",
        "--channel", "phone", "--notice", "bank-a/2026-10", "--receipt-out", str(receipt),
    )  # fmt: skip
    assert code == 0, err
    consent_id = json.loads(out)["consentId"]

    code, key, err = await run(
        "consent", "receipt-key", *client_args(stack, "bank-a", Role.ADVISOR)
    )
    assert code == 0, err
    key_file = tmp_path / "gateway.pub"
    key_file.write_text(key)

    assert json.loads(key)["kty"] == "OKP"  # a JWK by default

    code, out, err = await run("consent", "verify-receipt", str(receipt), "--key", str(key_file))
    assert code == 0, err
    assert "VALID" in out
    assert consent_id in out
    receipt_id = json.loads(out[out.index("{") :])["jti"]
    assert receipt_id in out.splitlines()[0]

    # The key as text, as a JWK or a PEM (a file or text) or base64, verifies it too.
    code, out, err = await run("consent", "verify-receipt", str(receipt), "--key", key.strip())
    assert code == 0, err
    assert "VALID" in out
    for key_format in ("pem", "base64"):
        code, other_key, err = await run(
            "consent", "receipt-key", *client_args(stack, "bank-a", Role.ADVISOR),
            "--format", key_format,
        )  # fmt: skip
        assert code == 0, err
        other_file = tmp_path / f"gateway.{key_format}"
        other_file.write_text(other_key)
        for given in (str(other_file), other_key.strip()):
            code, out, err = await run("consent", "verify-receipt", str(receipt), "--key", given)
            assert code == 0, (key_format, err)
            assert "VALID" in out
    assert "BEGIN PUBLIC KEY" in (tmp_path / "gateway.pem").read_text()

    tampered = tmp_path / "tampered.jws"
    header, payload, signature = receipt.read_text().strip().split(".")
    tampered.write_text(f"{header}.{payload[:-2]}xx.{signature}")
    code, out, err = await run("consent", "verify-receipt", str(tampered), "--key", key.strip())
    assert code == 1
    assert "INVALID" in err
    assert "Traceback" not in err

    code, out, err = await run(
        "consent", "list", *client_args(stack, "bank-a", Role.ADVISOR), "--customer", customer,
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert [c["consentId"] for c in json.loads(out)] == [consent_id]

    withdrawal = tmp_path / "withdrawal.jws"
    code, out, err = await run(
        "consent", "revoke", consent_id, *client_args(stack, "bank-a", Role.ADVISOR),
        "--channel", "app", "--receipt-out", str(withdrawal),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["state"] == "CONSENT_STATE_WITHDRAWN"
    code, out, err = await run("consent", "verify-receipt", str(withdrawal), "--key", str(key_file))
    assert code == 0, err
    assert consent_id in out
    assert "(withdrawn)" in out
    assert receipt_id not in out

    code, out, err = await run(
        "consent", "grant", *client_args(stack, "bank-a", Role.ADVISOR),
        "--customer", customer, "--source", "telco-a", "--to", "bank-a",
        "--category", "dna", "--purpose", "incident-resolution",
    )  # fmt: skip
    assert code == 1
    assert "INVALID_ARGUMENT" in err
    assert "categories[0]" in err
