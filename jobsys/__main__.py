"""``python -m jobsys`` runs the command line."""

from jobsys.cli import main

main()
