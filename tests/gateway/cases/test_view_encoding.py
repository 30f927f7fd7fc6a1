"""The view's hand-assembled encodings agree with protobuf's own."""

from __future__ import annotations

import datetime as dt

import pytest
from coopgate.v1 import cases_pb2
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from gateway.cases.reader import _set_time
from gateway.cases.rows import TimelineEvent
from gateway.cases.view import _TIMELINE_FIELD, _VIEW_FIELD, Timeline, _encoded_field


@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 1),
        max_value=dt.datetime(2200, 1, 1),
        timezones=st.just(dt.UTC),
    )
)
def test_set_time_matches_from_datetime(at: dt.datetime) -> None:
    ours, theirs = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    _set_time(ours, at)
    theirs.FromDatetime(at)
    assert (ours.seconds, ours.nanos) == (theirs.seconds, theirs.nanos)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16_383, 16_384, 2_000_000])
def test_encoded_field_is_a_length_delimited_field(size: int) -> None:
    item = cases_pb2.TimelineItem(
        interaction=cases_pb2.Interaction(summary="x" * size) if size else None
    )
    view = cases_pb2.CaseView()
    view.timeline.append(item)
    assert _encoded_field(_TIMELINE_FIELD, item.SerializeToString()) == view.SerializeToString()
    assert (
        _encoded_field(_VIEW_FIELD, view.SerializeToString())
        == cases_pb2.GetCaseViewResponse(view=view).SerializeToString()
    )


def test_a_timeline_joined_from_its_encoded_items_parses_to_the_same_view() -> None:
    events = [
        TimelineEvent(
            n,
            source,
            category,
            cases_pb2.TimelineItem(
                sequence=n,
                interaction=cases_pb2.Interaction(
                    partner_id=source, summary=f"note {n}", category=category
                ),
            ),
        )
        for n, (source, category) in enumerate(
            [("bank-a", "a"), ("telco-a", "b"), ("bank-a", "a"), ("telco-a", "c")] * 3, start=1
        )
    ]
    timeline = Timeline.of(events)
    assert timeline.position == 12
    assert [f.source_partner_id + "/" + f.category for f in timeline.flows] == [
        "bank-a/a",
        "telco-a/b",
        "telco-a/c",
    ]
    assert timeline.counts == [6, 3, 3]
    shown = [True, False, True]
    header = cases_pb2.CaseView(position=timeline.position)
    joined = header.SerializeToString() + b"".join(
        encoded
        for encoded, i in zip(timeline.encoded, timeline.flow_index, strict=True)
        if shown[i]
    )
    expected = cases_pb2.CaseView(position=timeline.position)
    expected.timeline.extend(e.item for e in events if e.category != "b")
    assert cases_pb2.CaseView.FromString(joined) == expected
