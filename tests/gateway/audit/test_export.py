"""Replaying an export against a checkpoint names the first entry that was tampered with,
and says what was done to it."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.audit import Checkpoint, leaf_hash, root_from_leaf_hashes
from gateway.audit.export import ExportedEntry, Replay, ReplayError, replay

ENTRIES = [json.dumps({"n": n, "kind": "access"}).encode() for n in range(12)]


def exported(entries: list[bytes] = ENTRIES) -> list[str]:
    return [ExportedEntry(i, e, leaf_hash(e)).to_line() for i, e in enumerate(entries)]


def checkpoint(size: int = len(ENTRIES)) -> Checkpoint:
    leaves = [leaf_hash(e) for e in ENTRIES[:size]]
    return Checkpoint("coopgate.test/audit", size, root_from_leaf_hashes(leaves))


def failure(lines: list[str], size: int = len(ENTRIES)) -> ReplayError:
    with pytest.raises(ReplayError) as caught:
        replay(lines, checkpoint(size))
    return caught.value


def test_an_untouched_export_matches_and_newer_entries_are_told_apart() -> None:
    assert replay(exported(), checkpoint()) == Replay(covered=12, newer=0)
    assert replay([*exported(), ""], checkpoint(7)) == Replay(covered=7, newer=5)
    assert replay([], checkpoint(0)) == Replay(covered=0, newer=0)


def with_canonical(line: str, canonical: bytes, *, rehash: bool = False) -> str:
    body = json.loads(line)
    body["canonical"] = base64.b64encode(canonical).decode()
    if rehash:
        body["leaf_hash"] = base64.b64encode(leaf_hash(canonical)).decode()
    return json.dumps(body)


def test_each_kind_of_tampering_is_located() -> None:
    lines = exported()
    edited = list(lines)
    edited[4] = with_canonical(lines[4], ENTRIES[4].replace(b"access", b"nothing"))
    error = failure(edited)
    assert (error.index, "was edited" in str(error)) == (4, True)

    error = failure(lines[:6] + lines[7:])
    assert (error.index, "deleted" in str(error)) == (6, True)

    error = failure([*lines[:3], lines[8], *lines[3:8], *lines[9:]])
    assert (error.index, "moved" in str(error)) == (3, True)

    forged = ExportedEntry(5, b'{"forged":true}', leaf_hash(b'{"forged":true}')).to_line()
    error = failure([*lines[:5], forged, *lines[5:]])
    assert (error.index, "at lines 6 and 7: one of them was inserted" in str(error)) == (5, True)

    error = failure([*lines[:8], lines[2], *lines[8:]])
    assert (error.index, "line 9 repeats line 3" in str(error)) == (8, True)

    error = failure(lines[:9])
    assert (error.index, "truncated" in str(error)) == (9, True)


def test_a_rewrite_that_keeps_every_line_consistent_still_fails_on_the_root() -> None:
    lines = exported()
    lines[2] = with_canonical(lines[2], b'{"rewritten":true}', rehash=True)
    error = failure(lines)
    assert error.index is None
    assert "do not produce the checkpoint's root" in str(error)
    # Beyond the checkpoint, the same rewrite is not something this checkpoint can see.
    assert replay(lines, checkpoint(2)) == Replay(covered=2, newer=10)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 3 is not JSON"),
        ("[1, 2]", "line 3 is not a JSON object"),
        ('{"index": "2", "canonical": "", "leaf_hash": ""}', "not a non-negative integer"),
        ('{"index": 2, "canonical": "%%", "leaf_hash": "' + "A" * 43 + '="}', "not valid base64"),
        ('{"index": 2, "canonical": "", "leaf_hash": "AAAA"}', '"leaf_hash" is 3 bytes'),
    ],
)
def test_a_malformed_line_is_named(line: str, message: str) -> None:
    lines = exported()
    lines[2] = line
    error = failure(lines)
    assert error.index == 2
    assert message in str(error)
