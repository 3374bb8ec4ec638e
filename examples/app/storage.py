"""The service's database: plain synchronous ``sqlite3``, one connection per call.

Every method blocks its caller until SQLite is done. Called from a worker thread that is
harmless; called from an ``async def`` endpoint it stops the event loop for as long as the
query runs.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Optional, Union

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    team_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS users_team ON users (team_id);
-- No index on events.user_id: nobody noticed, because the table used to be small.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS thumbnails (
    document_id INTEGER NOT NULL,
    page INTEGER NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (document_id, page)
);
"""

TEAM_COUNT = 800

ACTIVITY_COLUMNS = ("id", "user_id", "team_id", "kind", "at")

# Generate users and a few months of activity in SQL: fast, and no Python loop.
SEED = """
INSERT INTO users (id, email, name, team_id)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :users)
SELECT i, 'user' || i || '@example.com', 'User ' || i, i % :teams FROM n;

INSERT INTO events (user_id, kind, at)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :events)
SELECT (i * 7919) % :users + 1,
       CASE i % 3 WHEN 0 THEN 'login' WHEN 1 THEN 'upload' ELSE 'export' END,
       datetime(1704067200 + i * 97, 'unixepoch')
FROM n;
"""

TEAM_MEMBERS = """
SELECT u.id, u.email, u.name,
       (SELECT count(*) FROM events e WHERE e.user_id = u.id) AS events,
       (SELECT max(at) FROM events e WHERE e.user_id = u.id AND e.kind = 'login') AS last_login
FROM users u
WHERE u.team_id = ?
ORDER BY u.name
"""


class Storage:
    def __init__(self, path: Union[str, Path]) -> None:
        self.path = str(path)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    def seed(self, *, users: int = 20_000, events: int = 100_000) -> None:
        """Fill the database with ``users`` users and ``events`` activity events."""
        with closing(self._connect()) as db, db:
            for statement in SEED.split(";"):
                if statement.strip():
                    db.execute(statement, {"users": users, "events": events, "teams": TEAM_COUNT})

    def team_members(self, team_id: int) -> list[dict[str, Any]]:
        """The members of a team with their activity counts.

        Each correlated subquery scans the whole events table once per member: fine with a
        thousand events, a few hundred milliseconds with a hundred thousand.
        """
        with closing(self._connect()) as db:
            return [dict(row) for row in db.execute(TEAM_MEMBERS, (team_id,))]

    def user(self, user_id: int) -> Optional[dict[str, Any]]:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
            return dict(row) if row else None

    def user_activity(self, user_id: int) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT kind, count(*) AS n, max(at) AS last FROM events "
                "WHERE user_id = ? GROUP BY kind ORDER BY kind",
                (user_id,),
            )
            return [dict(row) for row in rows]

    ACTIVITY = (
        "SELECT e.id, e.user_id, u.team_id, e.kind, e.at "
        "FROM events e JOIN users u ON u.id = e.user_id ORDER BY e.id LIMIT ?"
    )

    def activity_rows(self, limit: int) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            return [dict(row) for row in db.execute(self.ACTIVITY, (limit,))]

    def activity_page(self, after_id: int, size: int) -> list[tuple]:
        """``size`` activity rows with ``id > after_id``, as tuples of ``ACTIVITY_COLUMNS``."""
        with closing(self._connect()) as db:
            cur = db.cursor()
            cur.row_factory = None
            return cur.execute(
                "SELECT e.id, e.user_id, u.team_id, e.kind, e.at FROM events e "
                "JOIN users u ON u.id = e.user_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
                (after_id, size),
            ).fetchall()

    def add_document(self, name: str, body: str) -> int:
        with closing(self._connect()) as db, db:
            cur = db.execute("INSERT INTO documents (name, body) VALUES (?, ?)", (name, body))
            return int(cur.lastrowid or 0)

    def document(self, doc_id: int) -> Optional[dict[str, Any]]:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM documents WHERE id = ?", (doc_id,)).fetchone()
            return dict(row) if row else None

    def save_thumbnails(self, doc_id: int, pngs: list[bytes]) -> int:
        """Stores the thumbnails of a document (replacing older ones); returns their count."""
        with closing(self._connect()) as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO thumbnails (document_id, page, png) VALUES (?, ?, ?)",
                [(doc_id, page, png) for page, png in enumerate(pngs, 1)],
            )
        return len(pngs)

    def find_documents(self, query: str) -> list[dict[str, Any]]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT id, name FROM documents WHERE name LIKE ? ORDER BY id LIMIT 20",
                (f"%{query}%",),
            )
            return [dict(row) for row in rows]
