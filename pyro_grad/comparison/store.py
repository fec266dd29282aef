"""``RunStore``: finished SVI runs in SQLite, one row per (config, seed), written as each ends.

Each row is committed in its own transaction the moment its run finishes, so a process
killed mid-way loses only the run in progress; a later call skips the stored ones.
"""

import json
import sqlite3
from pathlib import Path
from typing import Any, Dict, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (config, seed)
)
"""


class RunStore:
    """``out/runs.sqlite``: ``get(config, seed)`` and ``put(config, seed, record)``."""

    def __init__(self, out: Optional[str]):
        self.path = None if out is None else Path(out) / "runs.sqlite"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, config: str, seed: int) -> Optional[Dict[str, Any]]:
        if self.path is None:
            return None
        with self._connect() as db:
            row = db.execute("SELECT record FROM runs WHERE config = ? AND seed = ?", (config, seed)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, config: str, seed: int, record: Dict[str, Any]) -> None:
        if self.path is None:
            return
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs (config, seed, record) VALUES (?, ?, ?)",
                (config, seed, json.dumps(record)),
            )

    def count(self) -> int:
        if self.path is None:
            return 0
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
