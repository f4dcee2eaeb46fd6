"""Log format shared by the train and serve programs."""
import logging
import os
import sys


class _BarFriendlyHandler(logging.StreamHandler):
    """Writes through tqdm while a progress bar is on screen, so a log line never lands inside the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")  # never imported just for this
        if tqdm_module is None or not getattr(tqdm_module.tqdm, "_instances", None):
            return super().emit(record)
        try:
            tqdm_module.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def configure_logging() -> None:
    rank = os.environ.get("RANK")
    tag = f"[rank {rank}] " if rank not in (None, "0") else ""
    handler = _BarFriendlyHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
