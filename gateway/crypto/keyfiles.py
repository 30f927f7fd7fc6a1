"""The gateway's secrets on disk: random keys created on first use, mode 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


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
    return path.read_bytes()
