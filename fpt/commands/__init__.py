"""CLI subcommands, one module each (see fpt.cli.COMMAND_MODULES)."""
