"""The `ftonnx` command line: a thin layer of click commands over the Python API."""

from __future__ import annotations

import gc
import sys

import click

from ftonnx import __version__
from ftonnx.errors import FtonnxError, printable


class _Group(click.Group):
    """The commands are the public modules of this package, one module per command or group (modules named
    `_...` hold what several commands share), each imported only when its command runs or `--help` lists it,
    so that a command's start-up pays for its own imports alone.

    Turns FtonnxError and a command's bad options into one line on stderr (control characters escaped) and
    exit code 2, never a traceback or a usage screen (`--help` shows that)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        import pkgutil

        return sorted(i.name for i in pkgutil.iter_modules(__path__) if not i.name.startswith("_"))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        import importlib

        if cmd_name not in self.list_commands(ctx):
            return None
        command = importlib.import_module(f"{__name__}.{cmd_name}").command
        if _OWN_PROCESS:
            gc.freeze()  # see `run`
        return command

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


_OWN_PROCESS = False  # set by `run`: this process runs one command and ends


def run() -> None:
    """The `ftonnx` console script: `main` in a process of its own, which ends with the command. What start-up
    made (modules, classes, functions) lives until then, so once the command's module is imported it is frozen
    out of the cyclic garbage collector's passes (`gc.freeze`): without that, the full collection that came in
    the middle of a finetune walked some 43,000 objects (15 of the run's 30 ms of collection)."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    main()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="ftonnx")
def main() -> None:
    """Finetune a pretrained ONNX model from any framework and export it for the edge."""
