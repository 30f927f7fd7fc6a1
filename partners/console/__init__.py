"""The advisors' and compliance officers' web console a partner runs for its own
people (``python -m partners.console``): server-rendered pages over the partner SDK,
with that partner's certificates; live parts by server-sent events fed by
``WatchCase``. It reaches the gateway only over gRPC, like any partner backend."""

from partners.console.accounts import Accounts, Person, hash_password
from partners.console.app import create_app
from partners.console.settings import ConsoleSettings
from partners.console.web import Console

__all__ = ["Accounts", "Console", "ConsoleSettings", "Person", "create_app", "hash_password"]
