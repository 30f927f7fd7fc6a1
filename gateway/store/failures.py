"""The store's failures as the domain's: what the databases and their drivers raise
when the store cannot serve now (UNAVAILABLE, to be retried with the same idempotency
key) told apart from what a statement got wrong."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.core.errors import Unavailable

#: What asyncpg raises when a connection is lost or cannot be made. Operator
#: intervention (class 57): the server shutting down or ending the connection while a
#: statement runs, or not accepting connections yet. InternalClientError: the server's
#: goodbye still being read as a statement goes out ("another operation is in progress").
CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


#: SQLSTATE classes that say the server cannot serve now, not that the statement is
#: wrong: 08 connection exception, 53 insufficient resources ("too many clients
#: already", disk full), 57 operator intervention (shutting down, starting up).
_SQLSTATE_UNAVAILABLE = frozenset({"08", "53", "57"})


@contextmanager
def store_errors() -> Iterator[None]:
    """The store's failures as the domain's: UNAVAILABLE when it cannot be reached."""
    try:
        yield
    except PoolTimeout as exc:
        raise Unavailable("every connection to the store is in use", reason="STORE_BUSY") from exc
    except (OperationalError, sqlite3.OperationalError, OSError, ConnectionError) as exc:
        raise Unavailable("the store cannot be reached", reason="STORE_UNAVAILABLE") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated or isinstance(
            getattr(exc.orig, "__cause__", None), CONNECTION_LOST
        ):
            # The driver's own error under SQLAlchemy's: the connection went away while
            # the statement was sent (the server restarting); nothing was committed.
            raise Unavailable("the store connection was lost", reason="STORE_UNAVAILABLE") from exc
        if getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES:
            # PostgreSQL rolled the transaction back for another's sake: nothing of it
            # happened, and the same call succeeds when retried (with its key).
            raise Unavailable(
                "the store gave way to another write", reason="STORE_CONFLICT"
            ) from exc
        if str(getattr(exc.orig, "sqlstate", None) or "")[:2] in _SQLSTATE_UNAVAILABLE:
            raise Unavailable("the store cannot serve now", reason="STORE_UNAVAILABLE") from exc
        raise
    except asyncpg.PostgresError as exc:  # raised as is while the pool connects
        if str(exc.sqlstate or "")[:2] in _SQLSTATE_UNAVAILABLE:
            raise Unavailable("the store cannot serve now", reason="STORE_UNAVAILABLE") from exc
        raise


#: Deadlock detected, serialization failure.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
