"""Fixtures for the partner side: a stage over a fresh cast of partners (its own
partner ids and service copies), so that no other test's work reaches them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.core.caller import Role
from partners.reference import COMPANIES
from partners.scenarios import Cast, RecordingNarrator, Stage
from tests.conftest import Stack


@pytest.fixture
async def stage(stack: Stack) -> AsyncIterator[Stage]:
    cast = Cast.fresh(uuid.uuid4().hex[:8])
    stage = Stage(
        stack.target,
        lambda partner, role: stack.credentials(partner, Role(role)),
        cast=cast,
        narrator=RecordingNarrator(),
        poll=0.1,
        patience=30,
    )
    try:
        for kind, partner in cast.partners.items():
            await stage.admin.register_partner(
                partner,
                display_name=f"{COMPANIES[kind].display_name} ({cast.tag})",
                kind=COMPANIES[kind].partner_kind,
            )
        yield stage
    finally:
        await stage.close()
