"""``FitStore``: SVI fits in ``out/fits.sqlite``, keyed by their identity digest.

* Each fit is committed in its own transaction the moment it ends, so a process killed
  mid-way loses only the fits in progress.
* A fit is found by its digest (:mod:`~pyro_grad.harness.comparison.identity`): a fit stored
  under other settings is never returned, and stays stored.
* Before computing a fit, a process *claims* its digest. Another process on the same
  ``out`` skips fits claimed by a live process and picks them up once stored. A claim
  whose process has died (same host: its pid is gone; any host: no heartbeat for
  :data:`CLAIM_TIMEOUT` seconds) has expired and can be taken over.

Every connection is closed after use; SQLite errors become one
:class:`~pyro_grad.EstimatorError` naming the file and what to do.
"""

import contextlib
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from pyro_grad.errors import EstimatorError

#: Seconds without a heartbeat after which another host's claim has expired.
CLAIM_TIMEOUT = 600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS fits (
    digest TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    record TEXT NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    digest TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    heartbeat REAL NOT NULL
);
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_lost(record: Dict[str, Any]) -> bool:
    """Whether a fit was lost with its worker (``executor.lost_record``): it has no figures,
    is never reused, and is computed again by the next call."""
    return bool(record.get("lost"))


def _lost(text: str) -> bool:
    """:func:`is_lost` of a stored record's JSON. A corrupt record is not: :meth:`FitStore.get`
    names it."""
    try:
        return is_lost(json.loads(text))
    except (json.JSONDecodeError, AttributeError):
        return False


class FitStore:
    """``out/fits.sqlite``; with ``out=None`` nothing is stored and nothing claimed."""

    def __init__(self, out: Optional[str]):
        self.path = None if out is None else Path(out) / "fits.sqlite"
        self.host, self.pid = socket.gethostname(), os.getpid()
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise EstimatorError(f"cannot write fits to {self.path.parent}: {error.strerror}") from None
        with self._transaction() as db:
            columns = [row[1] for row in db.execute("PRAGMA table_info(fits)")]
            if columns and "digest" not in columns:
                # A store from before fit digests: kept aside, never reused.
                db.execute("ALTER TABLE fits RENAME TO fits_without_digests")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _failure(self, error: Exception) -> EstimatorError:
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            advice = "another process holds it; try again when it is done"
        elif isinstance(error, sqlite3.OperationalError) and ("disk" in str(error) or "full" in str(error)):
            advice = "free some disk space, or choose another out directory"
        else:
            advice = "move the file aside (its finished fits are not reused) or choose another out directory"
        return EstimatorError(f"fit store {self.path} cannot be used ({error}): {advice}")

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
                yield db
        except sqlite3.DatabaseError as error:
            raise self._failure(error) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before any read so that claims are atomic."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def get(self, digest: str) -> Optional[Dict[str, Any]]:
        """The stored record with this digest, or None."""
        if self.path is None:
            return None
        with self._connection() as db:
            row = db.execute("SELECT config, seed, record FROM fits WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[2])
        except json.JSONDecodeError as error:
            raise EstimatorError(
                f"fit store {self.path}: the stored fit of config {row[0]!r}, seed {row[1]} is corrupt "
                f"({error.msg} at character {error.pos}); delete that row or move the file aside"
            ) from None

    def holds_other_settings(self, config: str, seed: int, digest: str) -> bool:
        """Whether a fit of this label and seed is stored under other settings (a digest
        that no longer matches, so it is recomputed rather than reused)."""
        if self.path is None:
            return False
        with self._connection() as db:
            row = db.execute(
                "SELECT 1 FROM fits WHERE config = ? AND seed = ? AND digest != ?", (config, seed, digest)
            ).fetchone()
        return row is not None

    def put(self, digest: str, config: str, seed: int, record: Dict[str, Any]) -> None:
        """Store a finished (or failed) fit and release this process's claim, in one transaction."""
        if self.path is None:
            return
        with self._transaction() as db:
            row = db.execute("SELECT record FROM fits WHERE digest = ?", (digest,)).fetchone()
            # A fit lost with its worker here never replaces one another process finished.
            if not (is_lost(record) and row is not None and not _lost(row[0])):
                db.execute(
                    "INSERT OR REPLACE INTO fits (digest, config, seed, record, stored_at) VALUES (?, ?, ?, ?, ?)",
                    (digest, config, seed, json.dumps(record), time.time()),
                )
            # Only this process's claim: one that expired and was taken over stays its new owner's.
            db.execute("DELETE FROM claims WHERE digest = ? AND host = ? AND pid = ?", (digest, self.host, self.pid))

    def claim(self, digest: str) -> str:
        """Claim a fit for this process, in one transaction with the check that it is not
        stored yet (or stored only as lost with its worker): ``"claimed"``, ``"stored"`` (another process finished it), or
        ``"held"`` (a live process is computing it)."""
        if self.path is None:
            return "claimed"
        with self._transaction() as db:
            row = db.execute("SELECT record FROM fits WHERE digest = ?", (digest,)).fetchone()
            if row is not None and not _lost(row[0]):
                return "stored"
            row = db.execute("SELECT host, pid, heartbeat FROM claims WHERE digest = ?", (digest,)).fetchone()
            if row is not None and (row[0], row[1]) != (self.host, self.pid) and self._live(*row):
                return "held"
            db.execute(
                "INSERT OR REPLACE INTO claims (digest, host, pid, heartbeat) VALUES (?, ?, ?, ?)",
                (digest, self.host, self.pid, time.time()),
            )
        return "claimed"

    def _live(self, host: str, pid: int, heartbeat: float) -> bool:
        if time.time() - heartbeat > CLAIM_TIMEOUT:
            return False
        return _alive(pid) if host == self.host else True

    def heartbeat(self, *digests: str) -> None:
        """Keep this process's claims fresh during long fits."""
        if self.path is None:
            return
        with self._transaction() as db:
            db.executemany(
                "UPDATE claims SET heartbeat = ? WHERE digest = ? AND host = ? AND pid = ?",
                [(time.time(), digest, self.host, self.pid) for digest in digests],
            )

    def release(self, digest: str) -> None:
        """Give up this process's claim (a fit that raised)."""
        if self.path is None:
            return
        with self._transaction() as db:
            db.execute("DELETE FROM claims WHERE digest = ? AND host = ? AND pid = ?", (digest, self.host, self.pid))
