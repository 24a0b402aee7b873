"""``python -m tieredstore`` runs the command line."""

from tieredstore.cli import main

main()
