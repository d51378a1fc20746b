"""``python -m lvsctl`` runs the CLI."""

from lvsctl.cli import main

main()
