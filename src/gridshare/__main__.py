"""``python -m gridshare`` runs the command line."""

from gridshare.cli import app

app()
