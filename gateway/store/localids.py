"""How the store finds a partner's own id for a customer without holding it in clear: a
keyed hash (HMAC-SHA-256 under the gateway's identifier key, DATA_DIR/secrets/identifier.key,
which every replica shares) of the partner and its id. The id itself is kept only sealed
under the subject's key (`gateway.identity.subjects.LocalIds`), which erasure destroys."""

from __future__ import annotations

import hmac

#: What the hashed message starts with: the identifier key also hashes matching
#: identifiers (``"<kind>:<value>"``, kind a number), which can never start so.
_DOMAIN = b"local-id\x00"


class LocalIdIndex:
    """The keyed hash by which (partner, local id) is looked up."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def digest(self, partner_id: str, local_id: str) -> bytes:
        """32 bytes, the same on every replica (they share the key); about 1 µs."""
        return hmac.digest(
            self._key, _DOMAIN + partner_id.encode() + b"\x00" + local_id.encode(), "sha256"
        )


class NoLocalIdIndex(LocalIdIndex):
    """A store opened without the gateway's secrets (`coopgate migrate`, tests of the
    store alone): looking a customer up by local id is refused."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(b"")

    def digest(self, partner_id: str, local_id: str) -> bytes:
        raise RuntimeError(
            "this store has no local-id key: set Store.local_ids (gateway.stack.open_runtime does)"
        )
