"""What the case page's templates are given for one view of a case (the whole page
and the live part the SSE stream replaces share it)."""

from __future__ import annotations

from typing import Any

from coopgate.v1 import cases_pb2

import partners.console.render as render
from partners.console.web import Console
from partners.enums import CaseStatus, Channel

CHANNELS = [c.label for c in Channel if c != Channel.UNSPECIFIED]


def case_context(console: Console, view: cases_pb2.CaseView) -> dict[str, Any]:
    h = view.header
    status = CaseStatus.of(h.status)
    mine = console.settings.partner_id
    offer = console.desk.offer(h.case_id)
    if offer is not None and (h.relationship_owner_id or status != CaseStatus.AWAITING_OWNER):
        offer = None
    decision = render.latest_decision(view)
    return {
        "view": view,
        "h": render.header(h),
        "timeline": console.timeline(view.timeline),
        "withheld": render.withheld(view),
        "decision": decision,
        "offer": offer,
        "prompts": console.desk.prompts_of(h.case_id),
        "can_resolve": h.relationship_owner_id == mine
        and status in (CaseStatus.OWNED, CaseStatus.REOPENED),
        "can_confirm": h.relationship_owner_id == mine and status == CaseStatus.RESOLVED,
        "closed": status == CaseStatus.CLOSED,
        "channels": CHANNELS,
        "position": view.position,
        "version": console.signals.version(h.case_id),
    }
