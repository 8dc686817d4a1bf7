"""The one exception type that means "the user gave us something we cannot use".

The CLI turns an `EdgeError` into a one-line message and exit code 2; any other
exception is our bug and keeps its traceback.
"""


class EdgeError(Exception):
    """Bad input or an unusable environment: one line, naming the value and what to do."""

    exit_code = 2
