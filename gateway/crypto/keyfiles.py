"""The gateway's secrets on disk: random keys created on first use, mode 0600, and the
checks every key file passes before the gateway uses it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class KeyFileError(Exception):
    """A key file the gateway needs is missing, unreadable, open to others or does not
    belong with its certificate: the start stops, saying which and what to do."""


def check_key_file(path: Path) -> None:
    """Refuse a key (or secret) file that group or others may read or write."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(
            f"{path} is open to other users (mode {mode:04o}): `chmod 600 {path}`, and if "
            "others may have read it, replace it"
        )


def read_secret(path: Path, size: int = 32) -> bytes:
    """The random secret kept in ``path``, created (0600, never overwritten) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # created concurrently: read theirs
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(size))
    check_key_file(path)
    secret = path.read_bytes()
    if len(secret) != size:
        raise KeyFileError(f"{path} holds {len(secret)} bytes where {size} are expected")
    return secret
