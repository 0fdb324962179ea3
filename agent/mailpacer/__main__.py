"""`python -m mailpacer` runs the command-line interface."""

from mailpacer.cli import main

raise SystemExit(main())
