"""Errors that services raise for bad input: one clear message naming what and where."""
from __future__ import annotations


class ServiceError(Exception):
    """A user-facing error (bad input, unknown name, forbidden action)."""


class NotFound(ServiceError):
    pass


class InputError(ServiceError):
    """Bad input data, located by file, line and field where known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = []
        if file:
            where.append(str(file) + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        super().__init__((", ".join(where) + ": " if where else "") + message)


class DatabaseUnavailable(ServiceError):
    """The database could not be reached or dropped the connection (a restart, a network cut, every pooled
    connection busy). Worth retrying as is: the next call reconnects. A write that was in flight may or may
    not have committed, which is why every submit is idempotent (a retry returns the label already saved)."""


class Forbidden(ServiceError):
    """The acting user's role does not allow this (an annotator calling an admin service)."""


# Primary keys are INTEGER columns: PostgreSQL refuses a larger number inside the query, with a DataError.
ID_RANGE = (1, 2**31 - 1)


def check_id(value: object, what: str) -> int:
    """An id that came from a link, a form or a script: a whole number some row could have, else NotFound
    naming it ("no task 99999999999"), instead of a database error on PostgreSQL."""
    if isinstance(value, bool) or not isinstance(value, int) or not ID_RANGE[0] <= value <= ID_RANGE[1]:
        raise NotFound(f"no {what} {value}")
    return value
