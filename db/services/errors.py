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


class Forbidden(ServiceError):
    """The acting user's role does not allow this (an annotator calling an admin service)."""
