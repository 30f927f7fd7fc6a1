"""Persistence: the engine, the schema and its Alembic migrations."""

from gateway.store.engine import Store, create_store
from gateway.store.migrate import migrate

__all__ = ["Store", "create_store", "migrate"]
