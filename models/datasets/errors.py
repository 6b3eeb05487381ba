"""Errors a user can act on: each names the file or field that is wrong."""


class DatasetError(Exception):
    """A data file is missing, unreadable or not laid out as its loader expects."""
