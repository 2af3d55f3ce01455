"""TensorBoard: event files under ``<run_dir>/tensorboard`` (``tensorboard --logdir``).

Written with tensorboardX, which needs neither TensorFlow nor torch. A resumed run replays
its whole history, so the event files of an earlier start are replaced rather than doubled.
Settings are one text summary (``settings``, a JSON block); figures are images.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mafl_graph.tracking.base import Tracker

LOGDIR = "tensorboard"
_PNG = b"\x89PNG\r\n\x1a\n"


class TensorBoardTracker(Tracker):
    """Writes TensorBoard event files (``report_to="tensorboard"``)."""

    name = "tensorboard"
    requires = "tensorboardX"

    def __init__(self) -> None:
        self.writer: Any = None
        self.logdir: Path | None = None
        self.last_iteration = 0

    def open(self, run_dir: Path, settings: Mapping[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        self.logdir = run_dir / LOGDIR
        for old in self.logdir.glob("events.out.tfevents.*"):
            old.unlink()
        self.writer = SummaryWriter(logdir=str(self.logdir))
        text = json.dumps(settings, indent=2, default=str)
        # Markdown: indented, the JSON shows as a code block.
        self.writer.add_text("settings", "\n".join("    " + line for line in text.splitlines()))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        if axis == "iteration":
            self.last_iteration = max(self.last_iteration, step)
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)

    def log_files(self, paths: Sequence[Path]) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        for path in paths:
            data = path.read_bytes()
            if not data.startswith(_PNG):
                continue  # TensorBoard shows encoded images; the report's figures are PNG
            width, height = struct.unpack(">II", data[16:24])
            image = Summary.Image(
                height=height, width=width, colorspace=4, encoded_image_string=data
            )
            summary = Summary(value=[Summary.Value(tag=f"figures/{path.stem}", image=image)])
            self.writer.file_writer.add_summary(summary, global_step=self.last_iteration)

    def close(self, *, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
