"""The one exception type a user is meant to read: the CLI prints it as a single line."""


class IntraError(Exception):
    """A user mistake (missing folder, bad option, unreadable image...), named precisely."""
