"""A real `langgraph dev` server on loopback, serving the repository's graphs, for tests.

The server runs in a working directory of its own, from a copy of the repository's
langgraph.json whose paths are made absolute, so the graph ids and entry points are the
repository's own. With the in-memory runtime the server saves its threads, runs and
checkpoints to ``.langgraph_api/`` under that directory (when it stops, and every 10 s) and
reads them back when it starts again there: :meth:`LangGraphDev.stop` then
:meth:`LangGraphDev.start` is the same server, restarted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skip_without_embedded_model() -> None:
    """Skip (outside CI) where the embedded model the graphs default to is not installed."""
    try:
        from mafl_graph.local import smollm2_gguf_path

        smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"embedded model unavailable: {error}")


class LangGraphDev:
    """One `langgraph dev` process in ``workdir``; :meth:`start` again after a stop resumes it."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.seconds = 0.0
        """How long the last start took, until the server answered."""
        config = json.loads((ROOT / "langgraph.json").read_text())
        config["dependencies"] = [str((ROOT / d).resolve()) for d in config["dependencies"]]
        config["graphs"] = {
            name: str((ROOT / spec.split(":")[0]).resolve()) + ":" + spec.split(":")[1]
            for name, spec in config["graphs"].items()
        }
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "langgraph.json").write_text(json.dumps(config))
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def start(self) -> str:
        """Start the server (on the same port each time) and return its URL once it answers."""
        self.starts += 1
        env = {
            **os.environ,
            "LANGSMITH_TRACING": "false",
            "LANGCHAIN_TRACING_V2": "false",
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("LANGSMITH_API_KEY", None)
        cli = Path(sys.executable).with_name("langgraph")
        started = time.perf_counter()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(cli), "dev", "--port", str(self.port), "--no-browser", "--no-reload"],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_up()
        self.seconds = time.perf_counter() - started
        return self.url

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: ``kill`` is a crash (SIGKILL), else a clean shutdown."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _wait_until_up(self) -> None:
        """Return once the server answers; fail with its log if it died or hung."""
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        text = ""
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if self.process.poll() is not None:
                pytest.fail(f"langgraph dev exited with {self.process.returncode}:\n{text[-4000:]}")
            if re.search(r"API: \S*http://127\.0\.0\.1:\d+", text):
                try:
                    with socket.create_connection(("127.0.0.1", self.port), 1):
                        pass
                    if "Application started up" in text:
                        return
                except OSError:
                    pass
            time.sleep(0.25)
        pytest.fail(f"langgraph dev did not start in {STARTUP_TIMEOUT:.0f} s:\n{text[-4000:]}")


@pytest.fixture(scope="module", name="server")
def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float]]:
    """(URL, seconds to start) of a `langgraph dev` serving the repository's graphs, one per
    test module: import it (``from langgraph_dev import server_fixture``) to use ``server``."""
    skip_without_embedded_model()
    dev = LangGraphDev(tmp_path_factory.mktemp("langgraph-dev"))
    dev.start()
    try:
        yield dev.url, dev.seconds
    finally:
        dev.stop()
