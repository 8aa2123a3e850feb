"""`python -m eventsourced_env`: the `esenv` command line."""

from .cli import run

run()
