"""The command line, ``pyro-grad``: ``commands`` (the parser and what each command
does), ``programs`` (programs and configs named on the command line), ``executors``
(where ``compare`` computes), ``tables`` and ``usage`` (mistakes, in one line)."""

from pyro_grad.cli.commands import main
from pyro_grad.cli.tables import gradient_table, models_table

__all__ = ["gradient_table", "main", "models_table"]
