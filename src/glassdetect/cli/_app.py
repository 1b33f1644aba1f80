"""The Typer application the command modules register on, and how a command fails."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    help="Detect AI-generated images without throwing away high-resolution detail (GLASS).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: inspect what a folder or list holds, audit it for shortcuts, build the offline benchmark.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)


def fail(msg: str, code: int = 2) -> None:
    """Print ``error: msg`` on stderr and exit with ``code`` (2: a usage or input problem).

    ``msg`` is printed literally: square brackets (``pip install 'glassdetect[serve]'``, paths, reprs)
    are text, never Rich markup, and no highlighting is applied to it."""
    console.print(Text.assemble(("error:", "red"), " ", msg), soft_wrap=True, highlight=False)
    raise typer.Exit(code)
