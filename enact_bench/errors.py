"""Errors caused by user input (suite files, CLI options): the CLI prints them as one line."""
from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user; the message says what was expected. Printed without traceback."""


class SuiteError(UserInputError):
    """A suite file (or a --set override) is invalid; the message names the key and the file."""
