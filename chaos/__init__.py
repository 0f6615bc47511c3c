"""The chaos suite: real services on a private broker and database, random faults, and
Jepsen-style checks of what came out. Run it with `python -m chaos` (see `--help`)."""
