"""Errors the user can fix. The CLI turns them into one line and exit code 2."""


class UsageError(ValueError):
    """Bad input: an unknown name, an impossible width or resolution, a missing file."""
