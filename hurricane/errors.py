"""The error type for mistakes a user can fix: the CLI prints its message as one line."""


class UserError(ValueError):
    """Bad input (a file, a field, a value) with a message that says what to do."""
