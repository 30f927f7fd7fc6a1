"""The clock and the validity periods, shared by the decision point and the consent
records and requests."""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def active(valid_from: dt.datetime, valid_until: dt.datetime | None, at: dt.datetime) -> bool:
    return valid_from <= at and (valid_until is None or at < valid_until)


__all__ = ["active", "now"]
