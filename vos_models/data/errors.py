"""Errors for bad input data (:class:`~vos_models.errors.DataError`, defined with the project's
other error kinds in :mod:`vos_models.errors`). Each message names the file and what was expected."""
from ..errors import DataError, InputNotFoundError

__all__ = ["DataError", "InputNotFoundError"]
