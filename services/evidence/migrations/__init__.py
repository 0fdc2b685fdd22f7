"""Alembic migrations of the evidence database (run by `kushim db upgrade`, never at import)."""
