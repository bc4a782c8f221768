"""Persistence: the schema, its migrations and the repository (SQLAlchemy lives only here).

One room per concern: `db` (engine, revision, lock, write transactions), `watches`
(registration and reports), `claims` (claims, write-backs, leases), `outbox` (deliveries),
`rows` (a watch from its row); `repo.Store` composes them.
"""
