"""Alembic environment: migrations run on the connection that `store.db` hands in."""

from __future__ import annotations

from alembic import context

from poller.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables when needed.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
