"""Temporal's JSON payload conversion with each dataclass's field types resolved once.

Temporal's JSON converter calls ``typing.get_type_hints`` for every dataclass it
decodes, nested ones included; the contracts are written with postponed annotations,
so each call evaluates every field's annotation string again (about 2.5% of the
gateway process's CPU under the incident benchmark). This converter decodes
dataclasses the same way with the resolved field types kept per class. The JSON on
the wire is unchanged: histories recorded with the default converter decode alike.
"""

from __future__ import annotations

import dataclasses
import typing
import weakref
from typing import Any

from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
)
from temporalio.converter import value_to_type as _value_to_type

#: (name, resolved type, init) per field, per dataclass. Weak: the workflow sandbox
#: re-imports the modules it does not pass through, and their classes go with each run.
_FIELDS: weakref.WeakKeyDictionary[type, tuple[tuple[str, Any, bool], ...]] = (
    weakref.WeakKeyDictionary()
)


def _fields(hint: type) -> tuple[tuple[str, Any, bool], ...]:
    found = _FIELDS.get(hint)
    if found is None:
        hints = typing.get_type_hints(hint)
        found = tuple((f.name, hints[f.name], f.init) for f in dataclasses.fields(hint))
        _FIELDS[hint] = found
    return found


class CachedDataclassConverter(JSONTypeConverter):
    """Decodes a dataclass as Temporal's `value_to_type` does, from cached field types."""

    def to_typed_value(self, hint: type, value: Any) -> Any:
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return JSONTypeConverter.Unhandled
        if not isinstance(value, dict):
            return JSONTypeConverter.Unhandled  # Temporal's own error names the mismatch
        converters = (self,)
        init_values: dict[str, Any] = {}
        other_values: dict[str, Any] = {}
        for name, field_hint, init in _fields(hint):
            if name not in value:
                continue  # a missing required field fails in the constructor, as upstream
            try:
                converted = _value_to_type(field_hint, value[name], converters)
            except Exception as err:
                raise TypeError(f"Failed converting field {name} on dataclass {hint}") from err
            (init_values if init else other_values)[name] = converted
        obj = hint(**init_values)
        for name, converted in other_values.items():
            object.__setattr__(obj, name, converted)
        return obj


class PayloadConverter(CompositePayloadConverter):
    """Temporal's default payload converters, JSON decoding through the cache above."""

    def __init__(self) -> None:
        super().__init__(
            *(
                JSONPlainPayloadConverter(custom_type_converters=[CachedDataclassConverter()])
                if isinstance(c, JSONPlainPayloadConverter)
                else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


#: The gateway's data converter: Temporal's default with `PayloadConverter`.
DATA_CONVERTER = dataclasses.replace(
    DataConverter.default, payload_converter_class=PayloadConverter
)
