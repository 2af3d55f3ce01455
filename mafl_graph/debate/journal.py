"""Model replies written the moment they arrive, so a killed run does not pay for them again.

LangGraph saves a node's result once the node has returned and the graph has scheduled the
write; under CPU load that comes a hundred milliseconds or more after the reply reached the
process (``benchmarks/answer_save_lag.py``), and a kill in between loses a paid answer. The
debate's model nodes write each reply here first, in the node, before they return; on resume a
node whose call is in the journal takes its reply instead of calling the model. Entries are
keyed by thread and by the call itself (role, agent, round and a hash of exactly what the model
is sent), so a reply is only ever reused for the same question, and a finished debate's entries
are deleted: the checkpoint holds them from then on.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

# Where a compiled graph's config carries the journal (``configurable``); absent: no journal.
JOURNAL_KEY = "mafl_reply_journal"
TABLE = "mafl_replies"


class ReplyJournal:
    """Replies of model calls in a table of the run's SQLite checkpoint database."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock | None = None) -> None:
        """``lock``: the checkpointer's, where it shares ``conn`` (SQLite connections are not
        safe for concurrent use, and sync nodes run in LangGraph's thread pool)."""
        self._conn = conn
        self._lock = lock or threading.Lock()
        self._serde = JsonPlusSerializer()
        with self._lock, conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (thread_id TEXT NOT NULL, "
                "call TEXT NOT NULL, type TEXT NOT NULL, reply BLOB NOT NULL, "
                "PRIMARY KEY (thread_id, call))"
            )

    @staticmethod
    def call_key(role: str, agent: int, round_: int, sent: Sequence[Any]) -> str:
        """What identifies one call within a debate: who asks, when, and exactly what."""
        digest = hashlib.sha256(json.dumps(list(sent), sort_keys=True).encode()).hexdigest()
        return f"{role}/{agent}/{round_}/{digest[:32]}"

    def get(self, thread_id: str, call: str) -> BaseMessage | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT type, reply FROM {TABLE} WHERE thread_id = ? AND call = ?",
                (thread_id, call),
            ).fetchone()
        if row is None:
            return None
        reply: BaseMessage = self._serde.loads_typed((row[0], row[1]))
        return reply

    def put(self, thread_id: str, call: str, reply: BaseMessage) -> None:
        kind, blob = self._serde.dumps_typed(reply)
        with self._lock, self._conn:
            self._conn.execute(
                f"INSERT OR REPLACE INTO {TABLE} (thread_id, call, type, reply) "
                "VALUES (?, ?, ?, ?)",
                (thread_id, call, kind, blob),
            )

    def forget(self, thread_id: str) -> None:
        """Drop a finished debate's replies: its checkpoint holds them now."""
        with self._lock, self._conn:
            self._conn.execute(f"DELETE FROM {TABLE} WHERE thread_id = ?", (thread_id,))
