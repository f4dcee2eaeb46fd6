"""Log format shared by the train and serve programs."""
import logging
import os
import sys


def configure_logging() -> None:
    rank = os.environ.get("RANK")
    tag = f"[rank {rank}] " if rank not in (None, "0") else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
