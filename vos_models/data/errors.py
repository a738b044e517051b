"""Errors for bad input data. Each message names the file and what was expected."""


class DataError(ValueError):
    """Input data that cannot be used (missing, unreadable, wrong format or size)."""
