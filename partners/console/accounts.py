"""Who may sign in to the console: local accounts from a TOML file (Argon2id
password hashes, argon2-cffi), or the person a trusted reverse proxy names in a
header. Each person has one role: ``advisor`` (the case pages) or ``compliance``
(the audit pages)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("advisor", "compliance")
_HASHER = PasswordHasher()
#: Verified against when the name is unknown, so that a wrong name costs what a wrong
#: password costs (no timing tells which names exist).
_DUMMY = _HASHER.hash("not a password of anyone")


@dataclass(slots=True, frozen=True)
class Person:
    """A signed-in person: the id sent to the gateway as the acting person, and the role."""

    person_id: str
    role: str
    name: str = ""


@dataclass(slots=True, frozen=True)
class Account:
    person: Person
    password_hash: str


def hash_password(password: str) -> str:
    """An Argon2id hash for an accounts file (``python -m partners.console hash-password``)."""
    return _HASHER.hash(password)


class Accounts:
    """The accounts file: ``[accounts.<id>]`` tables with ``password`` (an Argon2id
    hash), ``role`` and an optional display ``name``."""

    def __init__(self, accounts: dict[str, Account]) -> None:
        self._accounts = accounts

    @classmethod
    def load(cls, path: Path) -> Accounts:
        data = tomllib.loads(path.read_text())
        found: dict[str, Account] = {}
        for person_id, entry in data.get("accounts", {}).items():
            role = entry.get("role", "")
            if role not in ROLES:
                raise ValueError(f"{path}: account {person_id!r} has role {role!r}, not {ROLES}")
            hashed = entry.get("password", "")
            if not hashed.startswith("$argon2"):
                raise ValueError(f"{path}: account {person_id!r} needs an Argon2 password hash")
            found[person_id] = Account(Person(person_id, role, entry.get("name", "")), hashed)
        return cls(found)

    @staticmethod
    def write(path: Path, people: dict[str, tuple[str, str]]) -> None:
        """An accounts file for ``people`` (id → (role, password)), mode 0600."""
        lines = []
        for person_id, (role, password) in people.items():
            lines += [f'[accounts."{person_id}"]', f'role = "{role}"']
            lines += [f'password = "{hash_password(password)}"', ""]
        path.write_text("\n".join(lines))
        path.chmod(0o600)

    def check(self, person_id: str, password: str) -> Person | None:
        """The person if the password is theirs; None otherwise (same cost either way)."""
        account = self._accounts.get(person_id)
        try:
            _HASHER.verify(account.password_hash if account else _DUMMY, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return account.person if account else None
