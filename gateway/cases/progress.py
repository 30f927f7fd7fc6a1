"""A case's progress through its incident workflow: the answers to an ownership offer,
the resolution, the customer's answer to it, and the statuses the workflow records."""

from __future__ import annotations

import hashlib
from typing import Any

from coopgate.v1 import cases_pb2
from sqlalchemy import bindparam, select

from gateway.cases.incidents import Incidents
from gateway.cases.reader import CaseReader
from gateway.cases.resolutions import forget_resolution, store_resolution
from gateway.cases.rows import _load_case, _participating_case, set_status
from gateway.core.caller import Caller
from gateway.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from gateway.crypto.sealing import Sealer
from gateway.store import Store
from gateway.store.idempotency import run_once_external
from gateway.store.schema import cases
from gateway.store.statements import execute
from workflows import contracts

_STATUS = select(cases.c.status).where(cases.c.case_id == bindparam("id"))


class CaseProgress:
    """The steps of a case's incident workflow, relayed to it (`Incidents`), and the
    statuses it records on the case."""

    def __init__(
        self, store: Store, incidents: Incidents, sealer: Sealer, reader: CaseReader
    ) -> None:
        self.store = store
        self.incidents = incidents
        self.sealer = sealer
        self.reader = reader

    async def answer_offer(
        self,
        caller: Caller,
        request: cases_pb2.AcceptOwnershipRequest | cases_pb2.DeclineOwnershipRequest,
    ) -> cases_pb2.AcceptOwnershipResponse | cases_pb2.DeclineOwnershipResponse:
        accept = isinstance(request, cases_pb2.AcceptOwnershipRequest)
        self._require_ids(request.case_id, request.offer_id, "offer_id")
        async with self.store.read() as conn:
            await _participating_case(conn, caller, request.case_id)
        # Ids only, as for the customer's answer: a decline's free-text reason is not the
        # workflow's to keep (its history is out of erasure's reach), and it decides
        # nothing there (the next candidate is offered the case whatever it says).
        answer = contracts.OwnershipAnswer(offer_id=request.offer_id, partner_id=caller.partner_id)

        async def effect() -> Any:
            if accept:
                await self.incidents.accept(request.case_id, answer)
                async with self.store.read() as conn:
                    row = await _load_case(conn, request.case_id)
                    header = await self.reader.header(conn, caller, row, local_id="")
                header.relationship_owner_id = caller.partner_id
                return cases_pb2.AcceptOwnershipResponse(header=header)
            await self.incidents.decline(request.case_id, answer)
            return cases_pb2.DeclineOwnershipResponse()

        response_type: Any = (
            cases_pb2.AcceptOwnershipResponse if accept else cases_pb2.DeclineOwnershipResponse
        )
        method = "AcceptOwnership" if accept else "DeclineOwnership"
        result: Any = await run_once_external(
            self.store, caller, method, request, response_type, effect
        )
        return result  # type: ignore[no-any-return]

    async def resolve(
        self, caller: Caller, request: cases_pb2.ResolveCaseRequest
    ) -> cases_pb2.ResolveCaseResponse:
        self._require_ids(request.case_id, "x", "")
        if not request.resolution.strip():
            raise InvalidArgument.field("resolution", "say what was done")
        async with self.store.read() as conn:
            await _participating_case(conn, caller, request.case_id)

        # The text stays here, sealed under the case key; the workflow gets its id (its
        # history is out of erasure's reach). A retry with the same key reuses the id.
        resolution_id = hashlib.sha256(
            f"{caller.partner_id}\0{request.idempotency_key}".encode()
        ).hexdigest()[:32]

        async def effect() -> cases_pb2.ResolveCaseResponse:
            async with self.store.write() as conn:
                await store_resolution(
                    conn,
                    self.sealer,
                    request.case_id,
                    resolution_id,
                    caller.partner_id,
                    request.resolution,
                )
            try:
                await self.incidents.resolve(
                    request.case_id,
                    contracts.ResolveRequest(
                        partner_id=caller.partner_id, resolution_id=resolution_id
                    ),
                )
            except FailedPrecondition:
                async with self.store.write() as conn:  # refused: not the case's resolution
                    await forget_resolution(conn, request.case_id, resolution_id)
                raise
            return cases_pb2.ResolveCaseResponse(
                header=await self._current_header(caller, request.case_id)
            )

        return await run_once_external(
            self.store, caller, "ResolveCase", request, cases_pb2.ResolveCaseResponse, effect
        )

    async def customer_answer(
        self,
        caller: Caller,
        request: cases_pb2.ConfirmResolutionRequest | cases_pb2.ReopenCaseRequest,
    ) -> cases_pb2.ConfirmResolutionResponse | cases_pb2.ReopenCaseResponse:
        """The customer confirms the fix or reopens, relayed by a partner."""
        self._require_ids(request.case_id, "x", "")
        confirm = isinstance(request, cases_pb2.ConfirmResolutionRequest)
        async with self.store.read() as conn:
            await _participating_case(conn, caller, request.case_id)
        # Ids only: the customer's reason is not the workflow's to keep (its history is
        # out of erasure's reach), and it decides nothing there.
        answer = contracts.CustomerAnswer(partner_id=caller.partner_id)

        async def effect() -> Any:
            if confirm:
                await self.incidents.confirm(request.case_id, answer)
                return cases_pb2.ConfirmResolutionResponse(
                    header=await self._current_header(caller, request.case_id)
                )
            await self.incidents.reopen(request.case_id, answer)
            return cases_pb2.ReopenCaseResponse(
                header=await self._current_header(caller, request.case_id)
            )

        response_type: Any = (
            cases_pb2.ConfirmResolutionResponse if confirm else cases_pb2.ReopenCaseResponse
        )
        result: Any = await run_once_external(
            self.store,
            caller,
            "ConfirmResolution" if confirm else "ReopenCase",
            request,
            response_type,
            effect,
        )
        return result  # type: ignore[no-any-return]

    async def _current_header(self, caller: Caller, case_id: str) -> cases_pb2.CaseHeader:
        async with self.store.read() as conn:
            return await self.reader.header(
                conn, caller, await _load_case(conn, case_id), local_id=""
            )

    @staticmethod
    def _require_ids(case_id: str, other: str, other_field: str) -> None:
        violations = []
        if not case_id:
            violations.append(FieldViolation("case_id", "is required"))
        if other_field and not other:
            violations.append(FieldViolation(other_field, "is required"))
        if violations:
            raise InvalidArgument(violations)

    async def record_status(self, case_id: str, status_name: str) -> None:
        """Activity body: move the projection to a ``CaseStatus`` by short name."""
        status = cases_pb2.CaseStatus.Value(f"CASE_STATUS_{status_name}")
        async with self.store.write() as conn:
            current = (await execute(conn, _STATUS, {"id": case_id})).scalar()
            if current is None:
                raise NotFound(f"case {case_id!r} does not exist")
            if current != status:  # activities may be retried: record each change once
                await set_status(conn, self.sealer, case_id, status)
