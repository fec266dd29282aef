"""``Ledger``: a comparison's fits by key ``(config label, seed)``: each one's digest,
its record once known and where it came from, and the claims that let processes
sharing one store never compute the same fit twice.

A fit is found by its digest (:mod:`~pyro_grad.harness.comparison.identity`) in the
:class:`~pyro_grad.harness.comparison.store.FitStore`: reused when stored under the same
digest, computed again when stored under other settings or lost with its worker.
"""

import contextlib
from typing import Any, Dict, Iterable, List, Tuple

from pyro_grad.errors import EstimatorError
from pyro_grad.harness.comparison.store import FitStore, is_lost

Key = Tuple[str, int]


class Ledger:
    """The fits of one comparison in ``store``, keyed as ``digests`` (their order is the
    comparison's). ``records`` holds each fit once known; ``origin`` where it came from:
    ``"reused"`` from the store, ``"recomputed"`` (this label and seed were stored under
    other settings, or lost) or ``"new"``."""

    def __init__(self, store: FitStore, digests: Dict[Key, str]):
        self.store = store
        self.digests = digests
        self.records: Dict[Key, Dict[str, Any]] = {}
        self.origin: Dict[Key, str] = {}
        for (label, seed), digest in digests.items():
            stored = store.get(digest)
            if stored is not None and not is_lost(stored):
                self.records[(label, seed)] = stored
                self.origin[(label, seed)] = "reused"
            else:  # a fit lost with its worker is computed again
                other = stored is not None or store.holds_other_settings(label, seed, digest)
                self.origin[(label, seed)] = "recomputed" if other else "new"

    def pending(self) -> List[Key]:
        """The fits still to compute, in order."""
        return [key for key in self.digests if key not in self.records]

    def claim(self, key: Key) -> str:
        """Claim a fit for this process: ``"claimed"``; ``"stored"`` when another process
        finished it meanwhile (now in ``records``); ``"held"`` when a live process computes it."""
        claim = self.store.claim(self.digests[key])
        if claim == "stored":
            self.records[key], self.origin[key] = self.store.get(self.digests[key]), "reused"
        return claim

    def put(self, key: Key, record: Dict[str, Any]) -> None:
        """Store a computed fit (committed at once) and keep its record."""
        self.store.put(self.digests[key], *key, record)
        self.records[key] = record

    def heartbeat(self, keys: Iterable[Key]) -> None:
        """Keep this process's claims on ``keys`` alive."""
        self.store.heartbeat(*(self.digests[key] for key in keys))

    def release(self, keys: Iterable[Key]) -> None:
        """Give up the claims on ``keys`` not stored (a failed or interrupted call)."""
        for key in keys:
            if key not in self.records:
                with contextlib.suppress(EstimatorError):  # the store may be what failed; its error is the one raised
                    self.store.release(self.digests[key])

    def ordered(self) -> Dict[Key, Dict[str, Any]]:
        """Every record, in the comparison's order."""
        return {key: self.records[key] for key in self.digests}
