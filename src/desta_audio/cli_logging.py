"""One logging set-up for every `desta` command: the first call in a process decides, so each command makes it
when it starts, never at import or registration."""

from __future__ import annotations

import logging

# HTTP clients log every request at INFO: a line per judge verdict or generated sample would bury the progress bars.
CHATTY_LIBRARIES = ("httpx", "httpx2", "httpcore", "urllib3")


def setup_logging(level: int | str = logging.INFO, *, timestamps: bool = False) -> None:
    fields = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=f"%(asctime)s {fields}" if timestamps else fields)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
