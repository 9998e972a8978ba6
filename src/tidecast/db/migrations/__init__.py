"""Alembic migrations, shipped inside the package and run by ``tidecast.db.migrate``."""
