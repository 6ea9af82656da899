"""Timestamps written without SQLAlchemy look exactly like the ones written through it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from app.store.schema import UTCDateTime, sqlite_timestamp


def _through_sqlalchemy(value: datetime) -> str:
    dialect = sqlite.dialect()
    column_type = UTCDateTime()
    processor = column_type.dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    stored = processor(value)
    assert isinstance(stored, str)
    return stored


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 26, 5, 44, 20, 123456, tzinfo=UTC),
        datetime(2026, 11, 26, 5, 44, 20, tzinfo=UTC),  # no microseconds
        datetime(1, 1, 1, tzinfo=UTC),  # a four-digit year, zero-padded
        datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_sqlite_timestamp_matches_sqlalchemys_storage_format(value: datetime) -> None:
    assert sqlite_timestamp(value) == _through_sqlalchemy(value)


def test_stored_strings_sort_like_the_instants() -> None:
    base = datetime(2026, 11, 26, tzinfo=UTC)
    instants = [base + timedelta(microseconds=n * 999_983) for n in range(50)]
    assert sorted(map(sqlite_timestamp, instants)) == [sqlite_timestamp(i) for i in instants]
