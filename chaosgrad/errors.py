"""Errors that name what was wrong and what is accepted.

`InputError` is raised for bad input anywhere in chaosgrad; the CLI turns it into exit status 2.
"""


class InputError(ValueError):
    """Bad input from a user: the message names what was wrong and what is accepted."""
