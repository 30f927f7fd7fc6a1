"""The gateway's payload converter decodes what Temporal's default decodes, alike."""

from __future__ import annotations

import pytest
from temporalio.converter import DataConverter

from gateway.orchestration.converter import _FIELDS, DATA_CONVERTER, PayloadConverter
from workflows.contracts import (
    CarriedState,
    IncidentInput,
    KpiInput,
    MilestoneInput,
    RecordCaseStatusInput,
    Step,
    StepsInput,
)

VALUES: list[object] = [
    StepsInput(
        "case-1",
        (
            Step(record_case_status=RecordCaseStatusInput("case-1", "DIAGNOSING")),
            Step(tell_customer=MilestoneInput("case-1", "received", "n-1")),
            Step(
                record_kpis=KpiInput(
                    "case-1", 1.5, None, True, ("owner",), 2, {"bank-a": 0.25}, ("telco-a",)
                )
            ),
        ),
    ),
    IncidentInput("case-2", "nfc-payment", "bank-a", CarriedState(3, 1, ("x",), "bank-a", None)),
    IncidentInput("case-3", "nfc-payment", "bank-a"),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_decodes_as_the_default(value: object) -> None:
    payloads = DataConverter.default.payload_converter.to_payloads([value])
    ours = DATA_CONVERTER.payload_converter.from_payloads(payloads, [type(value)])
    theirs = DataConverter.default.payload_converter.from_payloads(payloads, [type(value)])
    assert ours == theirs == [value]
    assert type(value) in _FIELDS  # decoded through the cache, not upstream's path


@pytest.mark.parametrize(
    "raw", [{"case_id": "c", "steps": 3}, {"case_id": "c"}, "case"], ids=["field", "missing", "str"]
)
def test_wrong_shapes_fail_as_upstream(raw: object) -> None:
    payloads = DataConverter.default.payload_converter.to_payloads([raw])
    with pytest.raises(TypeError) as upstream:
        DataConverter.default.payload_converter.from_payloads(payloads, [StepsInput])
    with pytest.raises(TypeError) as ours:
        PayloadConverter().from_payloads(payloads, [StepsInput])
    assert str(ours.value) == str(upstream.value)
