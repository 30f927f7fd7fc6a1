"""The gateway's secrets as one set, from configuration: each from its environment
variable (base64, e.g. injected from a secret manager) or else from its file in the
secrets directory (``COOPGATE_SECRETS_DIR``, default ``DATA_DIR/secrets``, e.g. a
mounted secret volume).

Replicas on different hosts share no file system, and every replica must hold the
same keys (a case sealed by one is opened by another), so only the embedded stack
(`coopgate up`) and `coopgate secrets init` create missing ones; `coopgate gateway`
and `coopgate worker` refuse to start without them, naming the setting to give.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from gateway.crypto.keyfiles import KeyFileError, read_secret
from gateway.settings import Settings

#: Each secret: its file in the secrets directory, its setting (``COOPGATE_<NAME>``,
#: base64), its size in bytes.
SECRETS: dict[str, tuple[str, int]] = {
    "master": ("master.key", 32),
    "pseudonym": ("pseudonym.key", 64),
    "identifier": ("identifier.key", 32),
    "checkpoint": ("checkpoint.key", 32),
    "receipt": ("receipt.key", 32),
}


def env_name(name: str) -> str:
    return f"COOPGATE_{name.upper()}_KEY"


@dataclass(slots=True, frozen=True)
class GatewayKeys:
    """The five secrets every gateway and worker process must share."""

    #: Wraps every case's key (AES-256-GCM).
    master: bytes
    #: Pairwise subject pseudonyms (AES-256-SIV).
    pseudonym: bytes
    #: HMAC key of partners' local ids and of identifier matches.
    identifier: bytes
    #: Ed25519 seed signing the audit log's checkpoints.
    checkpoint: bytes
    #: Ed25519 seed signing consent receipts.
    receipt: bytes

    @classmethod
    def load(cls, settings: Settings, *, create: bool) -> GatewayKeys:
        """Every secret from its setting, else its file; a missing file is created only
        with ``create`` (the embedded stack), else refused with what to set."""
        found = {name: _one(settings, name, create=create) for name in SECRETS}
        return cls(**found)

    def for_migrations(self) -> dict[str, bytes]:
        """What migrations that convert stored rows read (by file name, as 0009 does)."""
        return {"identifier.key": self.identifier, "master.key": self.master}

    def as_environment(self) -> dict[str, str]:
        """The settings that carry these keys to another host (`coopgate secrets env`)."""
        return {env_name(name): base64.b64encode(getattr(self, name)).decode() for name in SECRETS}


def _one(settings: Settings, name: str, *, create: bool) -> bytes:
    file_name, size = SECRETS[name]
    value: SecretStr | None = getattr(settings, f"{name}_key")
    if value is not None:
        try:
            secret = base64.b64decode(value.get_secret_value().strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{env_name(name)} is not base64") from None
        if len(secret) != size:
            raise KeyFileError(
                f"{env_name(name)} holds {len(secret)} bytes where {size} are expected"
            )
        return secret
    path: Path = settings.secrets_dir / file_name
    if not path.exists() and not create:
        raise KeyFileError(
            f"the {name} key is not configured: set {env_name(name)} (base64 of {size} random "
            f"bytes, the same on every replica) or provide {path} (COOPGATE_SECRETS_DIR); "
            "`coopgate secrets init` creates a set, `coopgate secrets env` prints it as settings"
        )
    return read_secret(path, size)
