"""What the customer is told at each milestone of their case, composed here, on the
gateway's side: the case workflow names the milestone and references only (the owner,
the id of a stored resolution), so no customer text enters its history, which erasure
cannot reach. The owner's resolution is kept sealed under the case key
(`gateway.cases.resolutions`) and opened only to compose the notification, which is
itself sealed in the timeline."""

from __future__ import annotations

#: Each milestone's message; ``{owner}`` and ``{resolution}`` are filled in.
MESSAGES = {
    "received": "We have your report and are looking into it.",
    "diagnosing": "We are checking every company involved in this service.",
    "waiting-on-partner": "One company has not answered yet; we are going on without it.",
    "owner-assigned": "{owner} is now your single point of contact for this problem.",
    "escalated": "Your case has been passed to a specialist to speed things up.",
    "resolved": "Your problem is solved: {resolution} Tell us if it works again, or if it "
    "does not.",
    "closed": "Your case is closed. Thank you.",
    "reopened": "We have reopened your case and are on it again.",
}


def compose(milestone: str, *, owner: str = "", resolution: str = "") -> str:
    """The message for ``milestone``: no leading, trailing or doubled spaces, the
    resolution ended as a sentence."""
    resolution = " ".join(resolution.split())
    if resolution and resolution[-1] not in ".!?":
        resolution += "."
    template = MESSAGES.get(milestone, "There is news about your case.")
    if milestone == "resolved" and not resolution:
        template = template.replace(": {resolution}", ".")
    return " ".join(template.format(owner=owner, resolution=resolution).split())
