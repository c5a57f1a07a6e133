"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class CodeinstructError(Exception):
    """A problem with the user's input (file, record, recipe, model directory), stated in one line.

    The library raises it instead of printing; the CLI prints `error: <message>` and exits 1.
    """
