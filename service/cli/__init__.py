"""The ``tessera`` command (``main``) and its subcommands that are more than a few lines (``slide``)."""

from service.cli.main import main

__all__ = ["main"]
