"""Errors for bad input data. Messages name the file (and line) and the problem."""


class DataError(ValueError):
    """A sample or list entry that cannot be used."""
