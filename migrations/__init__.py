"""Alembic's migrations; installed as ``relay.migrations`` (see pyproject.toml)."""
