"""Proof verification agrees with every transparency-dev/merkle test vector: those kept
beside this test (vectors/merkle, from the project's shared conformance set), or those
in $COOPGATE_CONFORMANCE_DIR.

A missing directory fails the run: without the vectors nothing here would be checked."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import (
    ProofError,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(
    os.environ.get("COOPGATE_CONFORMANCE_DIR")
    or Path(__file__).resolve().parent / "vectors" / "merkle"
)
FILES = sorted(VECTORS.rglob("*.json")) if VECTORS.is_dir() else []


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _check(vector: dict[str, Any]) -> None:
    proof = [_b64(hash_) for hash_ in vector["proof"] or []]
    if "leafIdx" in vector:
        verify_inclusion(
            _b64(vector["leafHash"]),
            vector["leafIdx"],
            vector["treeSize"],
            proof,
            _b64(vector["root"]),
        )
    else:
        verify_consistency(
            vector["size1"], vector["size2"], proof, _b64(vector["root1"]), _b64(vector["root2"])
        )


def test_both_kinds_of_vectors_are_present() -> None:
    assert VECTORS.is_dir(), f"no conformance vectors at {VECTORS}; set COOPGATE_CONFORMANCE_DIR"
    kinds = {path.relative_to(VECTORS).parts[0] for path in FILES}
    assert kinds == {"inclusion", "consistency"}
    assert any(not json.loads(path.read_text())["wantErr"] for path in FILES)


@pytest.mark.parametrize(
    "path",
    FILES or [None],
    ids=[str(path.relative_to(VECTORS)) for path in FILES] or ["vectors-missing"],
)
def test_vector(path: Path | None) -> None:
    assert path is not None, f"no conformance vectors at {VECTORS}"
    vector = json.loads(path.read_text())
    if vector["wantErr"]:
        with pytest.raises(ProofError):
            _check(vector)
    else:
        _check(vector)


def test_valid_inclusion_vectors_rebuild_their_root() -> None:
    valid = [
        vector
        for vector in (json.loads(path.read_text()) for path in FILES)
        if "leafIdx" in vector and not vector["wantErr"]
    ]
    assert valid
    for vector in valid:
        rebuilt = root_from_inclusion_proof(
            _b64(vector["leafHash"]),
            vector["leafIdx"],
            vector["treeSize"],
            [_b64(hash_) for hash_ in vector["proof"] or []],
        )
        assert rebuilt == _b64(vector["root"]), vector["desc"]
