"""Command implementations behind the CLI."""
