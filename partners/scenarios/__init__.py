"""The scenarios of the source articles, played against a running gateway with
the reference backends answering for the companies."""

import contextlib

from partners.errors import GatewayError
from partners.scenarios import nfc_payment, smart_heating, transit_pass
from partners.scenarios.stage import (
    ADMIN_PARTNER,
    Cast,
    ConsentEffect,
    CredentialsFor,
    Narrator,
    Outcome,
    RecordingNarrator,
    Scenario,
    ScenarioFailed,
    Stage,
    Timings,
)

#: Every scenario, by name, in the order the demo plays them.
SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (nfc_payment.SCENARIO, smart_heating.SCENARIO, transit_pass.SCENARIO)
}


async def perform(scenario: Scenario, stage: Stage) -> Outcome:
    """Tell the scenario's premise, then play it; the copies of services it defined
    are retired at the end, however it ends."""
    stage.narrator.chapter(scenario.title, scenario.story)
    mark = len(stage.copies)
    try:
        outcome = await scenario.play(stage)
    except BaseException:
        with contextlib.suppress(GatewayError):
            await stage.retire_copies(mark)
        raise
    await stage.retire_copies(mark)
    return outcome


__all__ = [
    "ADMIN_PARTNER",
    "SCENARIOS",
    "Cast",
    "ConsentEffect",
    "CredentialsFor",
    "Narrator",
    "Outcome",
    "RecordingNarrator",
    "Scenario",
    "ScenarioFailed",
    "Stage",
    "Timings",
    "perform",
]
