"""The audit log's JSON Lines export, and its offline replay against a signed checkpoint.

One line per entry, in index order:
``{"index": 7, "canonical": "<base64 entry bytes>", "leaf_hash": "<base64>"}``.
Replay recomputes every leaf hash from the entry bytes and rebuilds the tree. Lines
that were deleted, moved, inserted or cut off show in the index sequence; an entry
edited after the gateway hashed it no longer matches its recorded leaf hash; and
whatever else was rewritten shows in the root, which the checkpoint's signature pins.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.audit.merkle import HASH_SIZE, leaf_hash, root_from_leaf_hashes
from gateway.audit.note import Checkpoint


class ReplayError(ValueError):
    """The export is not the log the checkpoint commits to; `index` is the first entry
    where it departs from it (None when no single entry can be named)."""

    def __init__(self, index: int | None, message: str) -> None:
        where = f"index {index}: " if index is not None else ""
        super().__init__(f"{where}{message}")
        self.index = index


@dataclass(slots=True, frozen=True)
class ExportedEntry:
    index: int
    canonical: bytes
    leaf_hash: bytes

    def to_line(self) -> str:
        body = {
            "index": self.index,
            "canonical": base64.b64encode(self.canonical).decode(),
            "leaf_hash": base64.b64encode(self.leaf_hash).decode(),
        }
        return json.dumps(body, separators=(",", ":"))


@dataclass(slots=True, frozen=True)
class Replay:
    """A replay that matched: `covered` entries are those the checkpoint commits to;
    `newer` entries follow them and no checkpoint at hand vouches for them."""

    covered: int
    newer: int


def _field_bytes(body: dict[str, object], name: str) -> bytes:
    value = body.get(name)
    if not isinstance(value, str):
        raise ValueError(f'"{name}" is not a base64 string')
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError(f'"{name}" is not valid base64') from None


def parse_line(text: str) -> ExportedEntry:
    """One export line; ValueError naming what is wrong with it."""
    try:
        body = json.loads(text)
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("is not a JSON object")
    index = body.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError('"index" is not a non-negative integer')
    recorded = _field_bytes(body, "leaf_hash")
    if len(recorded) != HASH_SIZE:
        raise ValueError(f'"leaf_hash" is {len(recorded)} bytes, want {HASH_SIZE}')
    return ExportedEntry(index, _field_bytes(body, "canonical"), recorded)


def _sequence_problem(
    entries: list[ExportedEntry], position: int, lines: list[int], seen_at: dict[int, list[int]]
) -> ReplayError:
    """Why the entry at `position` does not carry index `position`: what was done there."""
    index, line = entries[position].index, lines[position]
    if index < position:
        first = seen_at[index][0]
        if entries[first] == entries[position]:
            return ReplayError(
                position,
                f"line {line} repeats line {lines[first]} (entry {index}): an entry was duplicated",
            )
        return ReplayError(
            index,
            f"entry {index} appears twice with different contents, at lines {lines[first]} "
            f"and {line}: one of them was inserted",
        )
    later = [p for p in seen_at.get(position, []) if p > position]
    if later:
        return ReplayError(
            position,
            f"line {line} holds entry {index} where entry {position} belongs, and entry "
            f"{position} comes later (line {lines[later[0]]}): entries were moved or inserted",
        )
    return ReplayError(
        position,
        f"missing: line {line} jumps from entry {position - 1} to entry {index}: "
        "an entry was deleted",
    )


def replay(lines: Iterable[str], checkpoint: Checkpoint) -> Replay:
    """Checks an export against a checkpoint; raises ReplayError at the first bad index."""
    entries: list[ExportedEntry] = []
    line_of: list[int] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            entries.append(parse_line(text))
        except ValueError as exc:
            raise ReplayError(len(entries), f"line {number} {exc}") from None
        line_of.append(number)
    seen_at: defaultdict[int, list[int]] = defaultdict(list)
    for position, entry in enumerate(entries):
        seen_at[entry.index].append(position)

    leaves: list[bytes] = []
    for position, entry in enumerate(entries):
        line = line_of[position]
        if entry.index != position:
            raise _sequence_problem(entries, position, line_of, seen_at)
        computed = leaf_hash(entry.canonical)
        if computed != entry.leaf_hash:
            raise ReplayError(
                position,
                f"line {line}: the entry's bytes do not hash to its recorded leaf hash: "
                "the entry was edited",
            )
        leaves.append(computed)

    size = checkpoint.size
    if len(leaves) < size:
        raise ReplayError(
            len(leaves),
            f"missing: the export ends after {len(leaves)} entries but the checkpoint "
            f"covers {size}: the export was truncated",
        )
    if root_from_leaf_hashes(leaves[:size]) != checkpoint.root_hash:
        raise ReplayError(
            None,
            f"entries 0..{size - 1} do not produce the checkpoint's root, yet every entry "
            "matches its recorded leaf hash: entries were rewritten together with their "
            "leaf hashes; compare with `coopgate audit prove` for single entries",
        )
    return Replay(covered=size, newer=len(leaves) - size)
