"""Cases: opening an incident, its timeline, and the combined view for one reader.

Every item of the view, and of the live watch, passes the consent decision
point for this reader and purpose at the moment it is read; withheld items are
counted per source partner and category so the advisor knows which consent
to ask for.

The case service is made of parts, each given what it uses: callers call the
part that does the work (`Cases` only holds them).
"""

from __future__ import annotations

from gateway.cases.feed import CaseFeed
from gateway.cases.incidents import Incidents
from gateway.cases.intake import CaseIntake
from gateway.cases.listing import CaseListing
from gateway.cases.progress import CaseProgress
from gateway.cases.reader import CaseReader
from gateway.cases.starts import WorkflowStarts
from gateway.cases.view import CaseViews
from gateway.cases.watch import CaseWatch
from gateway.consent.rules import ConsentRules
from gateway.consent.vocabulary import Vocabulary
from gateway.crypto.pseudonyms import Pseudonyms
from gateway.crypto.sealing import Sealer
from gateway.store import Store


class Cases:
    """The parts of the case service, made over the same store, rules and keys."""

    __slots__ = (
        "intake",
        "listing",
        "local_ids",
        "progress",
        "reader",
        "starts",
        "views",
        "watching",
    )

    def __init__(
        self,
        store: Store,
        pseudonyms: Pseudonyms,
        incidents: Incidents,
        rules: ConsentRules,
        vocabulary: Vocabulary,
        feed: CaseFeed,
        sealer: Sealer,
        starts: WorkflowStarts | None = None,
    ) -> None:
        #: The incident workflows to start, recorded with their cases, and their sweep.
        self.starts = starts or WorkflowStarts(store, incidents)
        #: Headers, opened text, purpose checks and read records, shared by the parts.
        self.reader = CaseReader(pseudonyms, rules, vocabulary, sealer)
        #: Opening a case, interactions and findings.
        self.intake = CaseIntake(store, incidents, vocabulary, sealer, self.reader, self.starts)
        #: Partners' own ids for the customers (found by keyed hash, kept sealed).
        self.local_ids = self.intake.local_ids
        #: Ownership answers, resolution, the customer's answer, recorded statuses.
        self.progress = CaseProgress(store, incidents, sealer, self.reader)
        #: The combined view, kept as served.
        self.views = CaseViews(store, rules, sealer, self.reader)
        #: The live watch.
        self.watching = CaseWatch(store, rules, feed, self.reader)
        #: Cases a partner takes part in, and a customer's history.
        self.listing = CaseListing(store, pseudonyms, rules, self.reader)
