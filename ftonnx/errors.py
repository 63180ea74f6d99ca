"""The one exception type of ftonnx: its message is a single line a user can act on."""


class FtonnxError(Exception):
    """A problem with the user's input or environment; the CLI prints it and exits with code 2."""
