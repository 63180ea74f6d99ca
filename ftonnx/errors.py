"""The one exception type of ftonnx: its message is a single line a user can act on."""


class FtonnxError(Exception):
    """A problem with the user's input or environment; the CLI prints it and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name): the reason to show a user."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
