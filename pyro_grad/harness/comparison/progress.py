"""``FitLog``: one log line per fit a comparison stores, for logs and CI where no progress
bar shows (``logging.getLogger("pyro_grad.harness.comparison")``, level INFO)."""

import logging
from typing import Any, Dict, Tuple

logger = logging.getLogger("pyro_grad.harness.comparison")


class FitLog:
    """Counts the fits stored out of ``total`` and logs each one."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def stored(self, key: Tuple[str, int], record: Dict[str, Any]) -> None:
        self.done += 1
        label, seed = key
        if record["status"] == "finished":
            outcome = f"finished in {record['seconds']:.1f} s"
        else:
            outcome = f"failed: {record['reason']}"
        logger.info("fit %d of %d: config %r, seed %d, %s", self.done, self.total, label, seed, outcome)
