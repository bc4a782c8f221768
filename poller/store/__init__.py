"""Persistence: the schema, its migrations and the repository (SQLAlchemy lives only here)."""
