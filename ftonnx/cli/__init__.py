"""The `ftonnx` command line: a thin layer of click commands over the Python API."""

from __future__ import annotations

import sys

import click

from ftonnx import __version__
from ftonnx.errors import FtonnxError, printable


class _Group(click.Group):
    """Turns FtonnxError and a command's bad options into one line on stderr (control characters escaped) and
    exit code 2, never a traceback or a usage screen (`--help` shows that)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (FtonnxError, click.UsageError) as exc:
            message = exc.format_message() if isinstance(exc, click.UsageError) else str(exc)
            click.echo(f"ftonnx: error: {printable(message)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("ftonnx: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="ftonnx")
def main() -> None:
    """Finetune a pretrained ONNX model from any framework and export it for the edge."""


def _register() -> None:
    """Add the `command` of every public module in this package: one module per command or group
    (modules named `_...` hold what several commands share)."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        main.add_command(module.command)


_register()
