"""The store: every SQL statement, for SQLite and PostgreSQL side by side.

Nothing above this package imports a database driver; driver errors are
translated here into :mod:`app.errors`.
"""
