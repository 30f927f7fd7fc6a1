"""`coopgate case show|list|watch` as an advisor runs them against the gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from coopgate.v1 import cases_pb2, common_pb2

from gateway.core.caller import Role
from tests.conftest import Stack
from tests.helpers import COOPGATE, client_args, run_coopgate


async def test_show_list_and_watch_render_the_combined_view(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank, telco = stack.api("bank-a", Role.ADVISOR), stack.api("telco-a", Role.ADVISOR)
    customer = unique("cust")
    opened = await bank.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id="nfc-payment",
            customer_local_id=customer,
            channel=common_pb2.CHANNEL_PHONE,
            summary="phone payment refused at the till",
        )
    )
    await telco.cases.AppendInteraction(
        cases_pb2.AppendInteractionRequest(
            idempotency_key=unique("k"),
            case_id=opened.case_id,
            interaction=cases_pb2.Interaction(
                channel=common_pb2.CHANNEL_STORE, summary="checked the SIM", category="device.sim"
            ),
        )
    )
    bank_args = client_args(stack, "bank-a", Role.ADVISOR)

    code, out, err = await run_coopgate("case", "show", opened.case_id, *bank_args)
    assert code == 0, err
    assert "phone payment refused at the till" in out
    assert "device.sim from telco-a" in out  # withheld, and said so
    assert "checked the SIM" not in out

    code, out, err = await run_coopgate("case", "show", opened.case_id, *bank_args, "--json")
    assert code == 0, err
    assert json.loads(out)["header"]["caseId"] == opened.case_id

    code, out, err = await run_coopgate(
        "case", "list", *bank_args, "--customer", customer, "--json"
    )
    assert code == 0, err
    assert [c["caseId"] for c in json.loads(out)] == [opened.case_id]

    code, out, err = await run_coopgate(
        "case", "show", opened.case_id, *client_args(stack, "energy-a", Role.ADVISOR)
    )
    assert code == 1
    assert "NOT_FOUND" in err

    watcher = await asyncio.create_subprocess_exec(
        COOPGATE, "case", "watch", opened.case_id, *bank_args, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        async with asyncio.timeout(30):
            first = json.loads(await watcher.stdout.readline())
            assert first["item"]["sequence"] == "1"
            await bank.cases.AppendInteraction(
                cases_pb2.AppendInteractionRequest(
                    idempotency_key=unique("k"),
                    case_id=opened.case_id,
                    interaction=cases_pb2.Interaction(
                        channel=common_pb2.CHANNEL_EMAIL, summary="sent the customer a follow-up"
                    ),
                )
            )
            while True:
                line = json.loads(await watcher.stdout.readline())
                if line["item"].get("interaction", {}).get("summary", "").startswith("sent"):
                    break
            # Then nothing happens for a second: the watch says what it waits for (on
            # stderr, plain as it is no terminal; stdout keeps the items only).
            assert watcher.stderr is not None
            while b"waiting for the next event on the case" not in (
                await watcher.stderr.readline()
            ):
                pass
    finally:
        watcher.terminate()
        await watcher.wait()


async def test_open_prints_the_new_case_id(stack: Stack, unique: Callable[[str], str]) -> None:
    customer = unique("cust")
    code, out, err = await run_coopgate(
        "case",
        "open",
        *client_args(stack, "bank-a", Role.ADVISOR),
        *("--service", "nfc-payment", "--customer", customer),
        *("--summary", "Cannot pay by phone at a restaurant"),
    )
    assert code == 0, err
    case_id = out.strip()
    assert case_id.startswith("case-")
    bank = stack.api("bank-a", Role.ADVISOR)
    view = await bank.cases.GetCaseView(
        cases_pb2.GetCaseViewRequest(case_id=case_id, purpose="incident-resolution")
    )
    assert view.view.header.first_contact_partner_id == "bank-a"
    assert view.view.header.first_contact_channel == common_pb2.CHANNEL_PHONE

    code, _, err = await run_coopgate(
        "case",
        "open",
        *client_args(stack, "bank-a", Role.ADVISOR),
        *("--service", "nfc-payment", "--customer", customer, "--summary", "x"),
        *("--channel", "pigeon"),
    )
    assert code == 2
    assert "unknown channel 'pigeon'" in err


async def test_list_at_80_columns_shows_whole_ids_and_says_when_there_are_none(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    bank = stack.api("bank-a", Role.ADVISOR)
    customer = unique("cust")
    opened = await bank.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id="nfc-payment",
            customer_local_id=customer,
            channel=common_pb2.CHANNEL_PHONE,
            summary="phone payment refused at the till",
        )
    )
    bank_args = client_args(stack, "bank-a", Role.ADVISOR)
    code, out, err = await run_coopgate(
        "case", "list", *bank_args, "--customer", customer, columns=80
    )
    assert code == 0, err
    assert opened.case_id in out
    assert "nfc-payment" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    # Wide enough, the same as a table.
    code, out, err = await run_coopgate("case", "list", *bank_args, "--customer", customer)
    assert code == 0, err
    assert opened.case_id in out
    assert "┃ case" in out

    code, out, err = await run_coopgate(
        "case", "list", *bank_args, "--customer", unique("nobody"), columns=80
    )
    assert code == 0, err
    assert out.strip() == "no cases"

    # The case at 80 columns: its header's ids (a customer's pseudonym is 50
    # characters) fold whole, none is cut.
    code, out, err = await run_coopgate("case", "show", opened.case_id, *bank_args, columns=80)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    squeezed = "".join(out.split()).replace("│", "")
    assert opened.case_id in squeezed
    assert customer in squeezed  # the bank's own id for its customer
    assert "customer (your id)" in out
    telco_args = client_args(stack, "telco-a", Role.ADVISOR)
    code, out, err = await run_coopgate("case", "show", opened.case_id, *telco_args, columns=80)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    telco_view = await stack.api("telco-a", Role.ADVISOR).cases.GetCaseView(
        cases_pb2.GetCaseViewRequest(case_id=opened.case_id, purpose="incident-resolution")
    )
    pseudonym = telco_view.view.header.subject_id
    assert len(pseudonym) >= 40
    assert pseudonym in "".join(out.split()).replace("│", "")
    assert "customer (your pseudonym)" in out  # the operator has no id of its own for them
    assert customer not in out
    assert "…" not in out.split("┏")[0]  # the header panel cuts nothing


async def test_show_prints_partners_texts_as_written_never_as_markup(
    stack: Stack, unique: Callable[[str], str]
) -> None:
    """Square brackets in what partners wrote are text: rich would read "[bold]" as a
    style and drop it, and "[received]" (a notification's milestone) as an unknown tag."""
    bank = stack.api("bank-a", Role.ADVISOR)
    opened = await bank.cases.OpenCase(
        cases_pb2.OpenCaseRequest(
            idempotency_key=unique("k"),
            service_id="nfc-payment",
            customer_local_id=unique("cust"),
            channel=common_pb2.CHANNEL_PHONE,
            summary="till says [bold]DECLINED[/bold] [red]twice",
        )
    )
    code, out, err = await run_coopgate(
        "case", "show", opened.case_id, *client_args(stack, "bank-a", Role.ADVISOR)
    )
    assert code == 0, err
    flat = " ".join(out.replace("│", " ").split())
    assert "[bold]DECLINED[/bold]" in flat
    assert "[red]twice" in flat
