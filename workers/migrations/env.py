"""Run the ledger's Alembic migrations on the connection the Ledger hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from workers.ledger import Base


def run() -> None:
    """Migrate the given connection, or open one from the configured URL."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("set sqlalchemy.url, or run migrations through workers.ledger.Ledger")
        with create_engine(url).connect() as fresh:
            _migrate(fresh)
            fresh.commit()
        return
    _migrate(connection)


def _migrate(connection: Connection) -> None:
    """Configure the context for this connection and run the migrations."""
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=is_sqlite,  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported for the ledger")
run()
