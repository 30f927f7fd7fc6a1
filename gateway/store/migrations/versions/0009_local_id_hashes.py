"""local ids hashed and sealed: partners' customer ids no longer stored in clear

Issue 18: `subject_links.local_id`, `identifier_hashes.local_id` and
`match_proposals.local_id` held partners' customer ids in clear. A link is now found by
the keyed hash of (partner, local id) — HMAC-SHA-256 under the identifier key
(DATA_DIR/secrets/identifier.key), as `gateway.store.localids` computes it — and the id
is kept only in `subject_links.sealed_local_id`, AES-256-GCM under a key of the
subject's own (new table `subject_keys`, wrapped under DATA_DIR/secrets/master.key),
which erasure destroys. Existing rows are converted here: the migration reads the two
keys from the secrets directory `gateway.store.migrate` is given (`coopgate migrate`
and every process of the stack give theirs), and refuses to run without it when there
is a row to convert. Every subject that has a link gets a key; a subject without one
(an erased customer) gets none. The downgrade unseals the ids back (same keys).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.store.localids import LocalIdIndex

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_NONCE = 12


def _keys(purpose: str) -> tuple[LocalIdIndex, AESGCM]:
    """The identifier key's index and the master key, as the runtime reads them."""
    given: dict[str, bytes] = context.config.attributes.get("keys") or {}
    if "identifier.key" in given and "master.key" in given:
        return LocalIdIndex(given["identifier.key"]), AESGCM(given["master.key"])
    secrets_dir = context.config.attributes.get("secrets_dir")
    if secrets_dir is None:
        raise RuntimeError(
            f"migration 0009 {purpose} partners' local ids with the gateway's keys: run it "
            "with the data directory (`coopgate migrate --data-dir DIR`, or any process "
            "of the stack)"
        )
    found = []
    for name in ("identifier.key", "master.key"):
        path = Path(secrets_dir) / name
        if not path.exists():
            raise RuntimeError(f"migration 0009 needs {path}, which the gateway created")
        secret = path.read_bytes()
        if len(secret) != 32:
            raise RuntimeError(f"{path} holds {len(secret)} bytes where 32 are expected")
        found.append(secret)
    return LocalIdIndex(found[0]), AESGCM(found[1])


def _aad(subject_id: str, partner_id: str) -> bytes:
    # As `gateway.identity.subjects` seals and opens them.
    return f"{subject_id}/{partner_id}/local-id".encode()


def _subject_key_name(subject_id: str) -> bytes:
    # As `gateway.crypto.sealing.subject_key_name`.
    return f"subject:{subject_id}".encode()


def _seal(key: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + key.encrypt(nonce, plaintext, aad)


def _open(key: AESGCM, sealed: bytes, aad: bytes) -> bytes:
    return key.decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)


def upgrade() -> None:
    op.create_table(
        "subject_keys",
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["subjects.subject_id"],
            name=op.f("fk_subject_keys_subject_id_subjects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_subject_keys")),
    )
    for table in ("subject_links", "identifier_hashes", "match_proposals"):
        op.add_column(table, sa.Column("local_hash", sa.LargeBinary(), nullable=True))
    op.add_column("subject_links", sa.Column("sealed_local_id", sa.LargeBinary(), nullable=True))
    _hash_and_seal()
    with op.batch_alter_table("subject_links") as batch_op:
        batch_op.drop_constraint("pk_subject_links", type_="primary")
        batch_op.drop_column("local_id")
        batch_op.alter_column("local_hash", nullable=False)
        batch_op.alter_column("sealed_local_id", nullable=False)
        batch_op.create_primary_key("pk_subject_links", ["partner_id", "local_hash"])
    with op.batch_alter_table("identifier_hashes") as batch_op:
        batch_op.drop_constraint("pk_identifier_hashes", type_="primary")
        batch_op.drop_column("local_id")
        batch_op.alter_column("local_hash", nullable=False)
        batch_op.create_primary_key(
            "pk_identifier_hashes", ["partner_id", "local_hash", "kind", "digest"]
        )
    with op.batch_alter_table("match_proposals") as batch_op:
        batch_op.drop_column("local_id")
        batch_op.alter_column("local_hash", nullable=False)


def _hash_and_seal() -> None:
    bind = op.get_bind()
    links = bind.execute(
        sa.text("SELECT partner_id, local_id, subject_id FROM subject_links")
    ).all()
    hashed = {
        table: bind.execute(sa.text(f"SELECT DISTINCT partner_id, local_id FROM {table}")).all()
        for table in ("identifier_hashes", "match_proposals")
    }
    if not links and not any(hashed.values()):
        return
    index, master = _keys("hashes and seals")
    subject_keys: dict[str, AESGCM] = {}
    for subject_id in sorted({str(row.subject_id) for row in links}):
        raw = AESGCM.generate_key(bit_length=256)
        bind.execute(
            sa.text("INSERT INTO subject_keys (subject_id, wrapped_key) VALUES (:s, :w)"),
            {"s": subject_id, "w": _seal(master, raw, _subject_key_name(subject_id))},
        )
        subject_keys[subject_id] = AESGCM(raw)
    if links:
        bind.execute(
            sa.text(
                "UPDATE subject_links SET local_hash = :h, sealed_local_id = :sealed "
                "WHERE partner_id = :p AND local_id = :l"
            ),
            [
                {
                    "p": p,
                    "l": local,
                    "h": index.digest(p, local),
                    "sealed": _seal(subject_keys[str(s)], local.encode(), _aad(str(s), p)),
                }
                for p, local, s in links
            ],
        )
    for table, rows in hashed.items():
        if rows:
            bind.execute(
                sa.text(
                    f"UPDATE {table} SET local_hash = :h WHERE partner_id = :p AND local_id = :l"
                ),
                [{"p": p, "l": local, "h": index.digest(p, local)} for p, local in rows],
            )


def downgrade() -> None:
    for table in ("subject_links", "identifier_hashes", "match_proposals"):
        op.add_column(table, sa.Column("local_id", sa.String(length=200), nullable=True))
    _unseal()
    with op.batch_alter_table("match_proposals") as batch_op:
        batch_op.drop_column("local_hash")
        batch_op.alter_column("local_id", nullable=False)
    with op.batch_alter_table("identifier_hashes") as batch_op:
        batch_op.drop_constraint("pk_identifier_hashes", type_="primary")
        batch_op.drop_column("local_hash")
        batch_op.alter_column("local_id", nullable=False)
        batch_op.create_primary_key(
            "pk_identifier_hashes", ["partner_id", "local_id", "kind", "digest"]
        )
    with op.batch_alter_table("subject_links") as batch_op:
        batch_op.drop_constraint("pk_subject_links", type_="primary")
        batch_op.drop_column("local_hash")
        batch_op.drop_column("sealed_local_id")
        batch_op.alter_column("local_id", nullable=False)
        batch_op.create_primary_key("pk_subject_links", ["partner_id", "local_id"])
    op.drop_table("subject_keys")


def _unseal() -> None:
    """Back to clear ids: each link's id opened with its subject's key; identifier hashes
    and match proposals take their link's id (those whose link is gone go too)."""
    bind = op.get_bind()
    links = bind.execute(
        sa.text(
            "SELECT l.partner_id, l.local_hash, l.sealed_local_id, l.subject_id, k.wrapped_key "
            "FROM subject_links l LEFT JOIN subject_keys k ON k.subject_id = l.subject_id"
        )
    ).all()
    orphans = sum(
        bind.execute(
            sa.text(
                f"SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM subject_links l "
                "WHERE l.partner_id = t.partner_id AND l.local_hash = t.local_hash)"
            )
        ).scalar_one()
        for table in ("identifier_hashes", "match_proposals")
    )
    if not links and not orphans:
        return
    if links:
        _, master = _keys("unseals")
        cleared = []
        for p, local_hash, sealed, subject_id, wrapped in links:
            if wrapped is None:
                raise RuntimeError(f"subject {subject_id} has a link but no key: cannot unseal")
            wrapped = bytes(wrapped)
            raw = _open(master, wrapped, _subject_key_name(subject_id))
            local = _open(AESGCM(raw), bytes(sealed), _aad(subject_id, p)).decode()
            cleared.append({"p": p, "h": bytes(local_hash), "l": local})
        for table in ("subject_links", "identifier_hashes", "match_proposals"):
            bind.execute(
                sa.text(
                    f"UPDATE {table} SET local_id = :l WHERE partner_id = :p AND local_hash = :h"
                ),
                cleared,
            )
    for table in ("identifier_hashes", "match_proposals"):
        bind.execute(sa.text(f"DELETE FROM {table} WHERE local_id IS NULL"))
