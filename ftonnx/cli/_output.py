"""What the commands print: one line at a time, each through `ftonnx.errors.printable`, so that labels, node
names and paths taken from models, data sets and file names can neither restyle the terminal nor forge an
output line. Multi-line reports (`format_summary`, `format_table`) escape their own lines; `--json` output
is JSON and stays as it is."""

from __future__ import annotations

import click

from ftonnx.errors import printable


def echo(line: object = "", *, err: bool = False) -> None:
    """Print one line, its control characters escaped (a newline in it shows as \\n)."""
    click.echo(printable(line), err=err)


def echo_lines(lines: list[str], *, err: bool = False) -> None:
    """Print each of `lines`, escaped."""
    for line in lines:
        echo(line, err=err)


def progress_line(message: str) -> None:
    """A progress message of a long command, on stderr."""
    echo(message, err=True)
