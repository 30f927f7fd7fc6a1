"""The contract's declared limits, checked before any work (see ``limits.proto``).

Every request field of the coopgate.v1 services declares what it accepts with the
``(coopgate.v1.limits)`` field option: whether it is required, its size in bytes (and
characters where one was promised), its string format, how many items a repeated
field may hold, the range of a number or a duration. Beside those, every message is
checked for timestamps and durations within the protobuf range and for enums holding
only their defined values (proto3 enums decode any number).

`checker` compiles, once per message type, a check from the descriptors and their
options; the gateway's interceptor runs it on every request right after decoding. A
check collects every violation it finds (naming the field by its path, e.g.
``service.components[3].name``, and the rule it breaks, never the value) and raises
`InvalidArgument`. It runs on the hot path: a field costs an attribute read and a
comparison or two when the value is within its limits, and an unset message field is
not descended into.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from coopgate.v1 import limits_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.core.errors import FieldViolation, InvalidArgument

#: google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
#: google.protobuf.Duration's range: about ±10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000
NANOS = 1_000_000_000

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"

#: TEXT: no control character but tab, line feed and carriage return, no bidi
#: override or isolate (they make text read other than it is stored).
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SLUG = re.compile(r"[a-z][a-z0-9.-]*")


def _is_id(value: str) -> bool:
    # Printable ASCII without space: bytes 0x21 to 0x7E.
    return value.isascii() and value.isprintable() and " " not in value


def _is_slug(value: str) -> bool:
    return _SLUG.fullmatch(value) is not None


def _is_text(value: str) -> bool:
    # Printable text holds none of the refused characters: most text stops here.
    return value.isprintable() or _NOT_TEXT.search(value) is None


_FORMATS: dict[int, tuple[Callable[[str], bool], str]] = {
    limits_pb2.STRING_FORMAT_ID: (_is_id, "must be printable ASCII without spaces (ID format)"),
    limits_pb2.STRING_FORMAT_SLUG: (_is_slug, "must match [a-z][a-z0-9.-]* (SLUG format)"),
    limits_pb2.STRING_FORMAT_TEXT: (
        _is_text,
        "must not hold control characters or bidi overrides (TEXT format)",
    ),
}

#: A compiled check: the message, the path of its fields so far ("" or "a.b[2]."), and
#: where to add violations.
Check = Callable[[Any, str, list[FieldViolation]], None]
_REQUIRED = "is required"


def declared(field: FieldDescriptor) -> limits_pb2.FieldLimits | None:
    """The limits ``field`` declares, or None."""
    options = field.GetOptions()
    if not options.HasExtension(limits_pb2.limits):
        return None
    limits: limits_pb2.FieldLimits = options.Extensions[limits_pb2.limits]
    return limits


class _Compiled:
    """The checks of one message type, filled in after it is cached (types may nest
    themselves)."""

    __slots__ = ("checks",)

    def __init__(self) -> None:
        self.checks: tuple[Check, ...] = ()

    def __call__(self, message: Any, prefix: str, out: list[FieldViolation]) -> None:
        for check in self.checks:
            check(message, prefix, out)


_compiled: dict[str, _Compiled] = {}


def _message_check(descriptor: Descriptor | Any) -> _Compiled:
    compiled = _compiled.get(descriptor.full_name)
    if compiled is None:
        compiled = _compiled[descriptor.full_name] = _Compiled()
        compiled.checks = tuple(
            check for field in descriptor.fields if (check := _field_check(field)) is not None
        )
    return compiled


def checker(descriptor: Descriptor) -> Callable[[Message], None]:
    """The check of requests of type ``descriptor``: raises `InvalidArgument` naming
    every field out of its limits. Compiled once per type."""
    compiled = _message_check(descriptor)

    def check(request: Message) -> None:
        out: list[FieldViolation] = []
        compiled(request, "", out)
        if out:
            raise InvalidArgument(out)

    return check


def check(request: Message) -> None:
    """Checks ``request`` against its type's limits (compiled on first use)."""
    out: list[FieldViolation] = []
    _message_check(request.DESCRIPTOR)(request, "", out)
    if out:
        raise InvalidArgument(out)


# -- one field ---------------------------------------------------------------------


def _field_check(field: FieldDescriptor) -> Check | None:
    limits = declared(field)
    if limits is None:
        limits = limits_pb2.FieldLimits()
    name = field.name
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message_type = field.message_type
        assert message_type is not None
        if message_type.GetOptions().map_entry:
            return _items(name, limits, None) if limits.max_items else None
        sub = _special(message_type.full_name, limits) or _message_check(message_type)
        if field.is_repeated:
            return _items(name, limits, sub, nested=True)
        return _singular_message(name, limits.required, sub)
    value_check = _value_check(field, limits)
    if field.is_repeated:
        if value_check is None and not limits.max_items and not limits.required:
            return None
        return _items(name, limits, value_check)
    if value_check is None and not limits.required:
        return None
    return _singular(name, limits.required, value_check)


#: A check of one value: its problem in words, or None.
ValueCheck = Callable[[Any], str | None]


def _value_check(field: FieldDescriptor, limits: limits_pb2.FieldLimits) -> ValueCheck | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return _string_check(limits)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes_check(limits.max_bytes) if limits.max_bytes else None
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_check(field)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return None
    if limits.HasField("min") or limits.HasField("max"):
        return _number_check(
            limits.min if limits.HasField("min") else -math.inf,
            limits.max if limits.HasField("max") else math.inf,
            integer=field.cpp_type
            not in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT),
        )
    return None


def _singular(name: str, required: bool, value_check: ValueCheck | None) -> Check:
    def check(message: Any, prefix: str, out: list[FieldViolation]) -> None:
        value = getattr(message, name)
        if not value:
            if required:
                out.append(FieldViolation(prefix + name, _REQUIRED))
            # The zero value is within any declared bound but a positive minimum.
            if value_check is None or isinstance(value, str | bytes):
                return
        if value_check is not None and (problem := value_check(value)) is not None:
            out.append(FieldViolation(prefix + name, problem))

    return check


def _singular_message(name: str, required: bool, sub: Check) -> Check:
    nested = name + "."

    def check(message: Any, prefix: str, out: list[FieldViolation]) -> None:
        if message.HasField(name):
            sub(getattr(message, name), prefix + nested, out)
        elif required:
            out.append(FieldViolation(prefix + name, _REQUIRED))

    return check


def _items(
    name: str,
    limits: limits_pb2.FieldLimits,
    item_check: Any,
    *,
    nested: bool = False,
) -> Check:
    """A repeated field: its count, then each item (a value or, ``nested``, a message)."""
    max_items = limits.max_items
    required = limits.required
    too_many = f"must have at most {max_items} items"

    def check(message: Any, prefix: str, out: list[FieldViolation]) -> None:
        items = getattr(message, name)
        if not items:
            if required:
                out.append(FieldViolation(prefix + name, _REQUIRED))
            return
        if max_items and len(items) > max_items:
            # The items of a list refused whole are not looked at one by one.
            out.append(FieldViolation(prefix + name, too_many))
            return
        if item_check is None:
            return
        if nested:
            for i, item in enumerate(items):
                item_check(item, f"{prefix}{name}[{i}].", out)
            return
        for i, item in enumerate(items):
            if (problem := item_check(item)) is not None:
                out.append(FieldViolation(f"{prefix}{name}[{i}]", problem))

    return check


def _string_check(limits: limits_pb2.FieldLimits) -> ValueCheck | None:
    max_bytes = limits.max_bytes
    max_chars = limits.max_chars
    surely_fits = max_bytes // 4  # so many characters fit in max_bytes whatever they are
    form = _FORMATS.get(limits.format)
    blank_refused = limits.required
    if not (max_bytes or max_chars or form or blank_refused):
        return None
    too_many_chars = f"must be at most {max_chars} characters"
    too_many_bytes = f"must be at most {max_bytes} bytes"
    matches, format_rule = form if form is not None else (None, "")

    def check(value: str) -> str | None:
        if not value:
            return None
        size = len(value)
        if max_chars and size > max_chars:
            return too_many_chars
        if (
            max_bytes
            and size > surely_fits
            and (size > max_bytes or (not value.isascii() and len(value.encode()) > max_bytes))
        ):
            return too_many_bytes
        if matches is not None and not matches(value):
            return format_rule
        if blank_refused and value.isspace():
            return _REQUIRED
        return None

    return check


def _bytes_check(max_bytes: int) -> ValueCheck:
    too_many = f"must be at most {max_bytes} bytes"

    def check(value: bytes) -> str | None:
        return too_many if len(value) > max_bytes else None

    return check


def _enum_check(field: FieldDescriptor) -> ValueCheck:
    enum = field.enum_type
    assert enum is not None
    defined = frozenset(v.number for v in enum.values)
    rule = f"must be a defined {enum.name} value"

    def check(value: int) -> str | None:
        return None if value in defined else rule

    return check


def _number_check(low: float, high: float, *, integer: bool) -> ValueCheck:
    def shown(bound: float) -> str:
        return str(int(bound)) if bound.is_integer() else str(bound)

    if math.isinf(high):
        rule = (
            "must not be negative"
            if low == 0
            else "must be positive"
            if integer and low == 1
            else f"must be at least {shown(low)}"
        )
    elif math.isinf(low):
        rule = f"must be at most {shown(high)}"
    else:
        rule = f"must be in [{shown(low)}, {shown(high)}]"

    def check(value: float) -> str | None:
        # Written so that NaN is out of every range.
        return None if low <= value <= high else rule

    return check


# -- well-known types --------------------------------------------------------------


def _special(full_name: str, limits: limits_pb2.FieldLimits) -> Check | None:
    if full_name == _TIMESTAMP:
        return _timestamp_check
    if full_name == _DURATION:
        return _duration_check(limits.max_seconds)
    return None


def _timestamp_check(stamp: Any, prefix: str, out: list[FieldViolation]) -> None:
    if not (
        MIN_TIMESTAMP_SECONDS <= stamp.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= stamp.nanos < NANOS
    ):
        out.append(FieldViolation(prefix[:-1], "timestamp out of range"))


def _duration_check(max_seconds: int) -> Check:
    too_long = f"must be at most {max_seconds} seconds"

    def check(duration: Any, prefix: str, out: list[FieldViolation]) -> None:
        seconds, nanos = duration.seconds, duration.nanos
        if not (
            -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS
            and -NANOS < nanos < NANOS
            and (seconds == 0 or nanos == 0 or (seconds < 0) == (nanos < 0))
        ):
            out.append(FieldViolation(prefix[:-1], "duration out of range"))
        elif max_seconds and (seconds > max_seconds or (seconds == max_seconds and nanos > 0)):
            out.append(FieldViolation(prefix[:-1], too_long))

    return check
