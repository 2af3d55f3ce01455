"""The debate runner's SQLite checkpointer: langgraph's ``SqliteSaver``, awaited inline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.sqlite import SqliteSaver


class InlineSqliteSaver(SqliteSaver):
    """``SqliteSaver`` whose async methods run its sync ones on the calling event loop.

    Not ``AsyncSqliteSaver``: that one sends every statement to aiosqlite's worker thread and
    wakes the event loop for each result. A debate saves 7 checkpoints and about 10 task writes,
    and those hand-offs cost more than the SQL (benchmarks/orchestration_overhead.py measures
    the runner's own CPU time per model call with each saver). A write in WAL
    mode with ``synchronous=NORMAL`` takes tens of microseconds and never waits for the disk,
    so holding the loop for it is cheaper than the thread hop. The price: while another process
    holds the database's write lock, the loop waits (up to sqlite3's busy timeout, 5 s) instead
    of one worker thread.
    """

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for found in self.list(config, filter=filter, before=before, limit=limit):
            yield found

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, Any]:
        return self.get_delta_channel_history(config=config, channels=channels)
