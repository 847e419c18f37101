"""Fixtures live in modules named by what they provide (psycopg's habit)."""

pytest_plugins = ["tests.fix_db", "tests.fix_models", "tests.fix_ray"]
