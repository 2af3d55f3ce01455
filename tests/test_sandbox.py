"""The sandbox: each way generated code can misbehave ends in a clean, quick, non-ok result."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mafl_graph.sandbox import SandboxResult, Status, run_python


def run(code: str, **limits: object) -> SandboxResult:
    limits = {"timeout": 5.0, "cpu_seconds": 1, **limits}
    started = time.monotonic()
    result = run_python(code, **limits)  # type: ignore[arg-type]
    assert time.monotonic() - started < 8, "the sandbox must end every run promptly"
    return result


def test_a_normal_program_runs_with_its_output() -> None:
    result = run("import math, json\nprint(json.dumps([math.factorial(5)]))\n")
    assert result.status is Status.OK and result.ok
    assert result.returncode == 0
    assert result.stdout == "[120]\n" and result.stderr == ""
    assert result.refused == ()
    assert 0 < result.seconds < 5


def test_an_uncaught_exception_is_an_error_with_its_traceback() -> None:
    result = run("raise ValueError('boom')")
    assert result.status is Status.ERROR and result.returncode == 1
    assert "ValueError: boom" in result.stderr


def test_a_syntax_error_is_an_error() -> None:
    result = run("def f(:\n")
    assert result.status is Status.ERROR and "SyntaxError" in result.stderr


def test_an_infinite_loop_runs_out_of_cpu_time() -> None:
    result = run("while True:\n    pass\n", cpu_seconds=1)
    assert result.status is Status.TIMEOUT
    assert result.seconds < 4


def test_a_sleeping_program_runs_out_of_wall_clock_time() -> None:
    result = run("import time\ntime.sleep(60)\n", timeout=0.5)
    assert result.status is Status.TIMEOUT and result.returncode is None
    assert result.seconds < 3


def test_a_crash_is_killed_not_the_caller() -> None:
    segfault = run("import faulthandler\nfaulthandler._sigsegv()\n")
    assert segfault.status is Status.KILLED and segfault.returncode == -11
    abort = run("import os\nos.abort()\n")
    assert abort.status is Status.KILLED and abort.returncode == -6


def test_os_exit_is_an_error_with_its_code() -> None:
    result = run("import os\nprint('partial', flush=True)\nos._exit(3)\n")
    assert result.status is Status.ERROR and result.returncode == 3
    assert result.stdout == "partial\n"


def test_a_fork_bomb_is_refused() -> None:
    result = run("import os\nwhile True:\n    os.fork()\n")
    assert result.status is Status.REFUSED
    assert result.refused and result.refused[0].startswith("os.fork")


def test_a_caught_refusal_still_counts() -> None:
    code = "import os\ntry:\n    os.fork()\nexcept PermissionError:\n    print('carried on')\n"
    result = run(code)
    assert result.status is Status.REFUSED and result.stdout == "carried on\n"


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.execv('/bin/true', ['true'])",
        "import os\nos.posix_spawn('/bin/true', ['true'], {})",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import _posixsubprocess",
        "import os, signal\nos.kill(1, signal.SIGTERM)",
    ],
)
def test_processes_cannot_be_created_or_signalled(code: str) -> None:
    assert run(code).status is Status.REFUSED


def test_a_memory_bomb_runs_out_of_memory() -> None:
    grow = run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n", memory_mb=256)
    assert grow.status is Status.MEMORY
    at_once = run("x = bytearray(10**11)\n", memory_mb=256)
    assert at_once.status is Status.MEMORY


def test_huge_output_is_capped() -> None:
    endless = run("while True:\n    print('x' * 1000)\n", max_output=100_000)
    assert endless.status is Status.OUTPUT_LIMIT
    assert len(endless.stdout) == 100_000
    single = run("print('y' * 10**8)\n", max_output=100_000)
    assert single.status is Status.OUTPUT_LIMIT and len(single.stdout) <= 100_000


def test_a_write_outside_its_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    for code in (
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        "open('../escaped.txt', 'w').write('x')",
        f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
        f"import os\nos.mkdir({str(tmp_path / 'made')!r})",
        f"import shutil\nshutil.copy('/dev/null', {str(target)!r})",
    ):
        result = run(code)
        assert result.status is Status.REFUSED, code
    assert list(tmp_path.iterdir()) == []


def test_files_inside_its_directory_are_fine() -> None:
    code = (
        "import os, tempfile, pathlib\n"
        "pathlib.Path('a/b').mkdir(parents=True)\n"
        "pathlib.Path('a/b/c.txt').write_text('kept')\n"
        "os.rename('a/b/c.txt', 'a/c.txt')\n"
        "with tempfile.TemporaryDirectory() as scratch:\n"
        "    open(os.path.join(scratch, 'f'), 'w').write('x')\n"
        "print(open('a/c.txt').read(), sorted(os.listdir('.')), open('data.txt').read())\n"
    )
    result = run(code, files={"data.txt": "given"})
    assert result.status is Status.OK, result.stderr
    assert result.stdout == "kept ['a', 'data.txt'] given\n"


def test_reading_outside_its_directory_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "secret.txt").write_text("hunter2")
    for code in (
        f"print(open({str(run_dir / 'secret.txt')!r}).read())",
        f"import os\nprint(os.listdir({str(run_dir)!r}))",
        "print(open('/etc/passwd').read())",
        "print(open('/proc/self/environ').read())",
        f"import os\nfd = os.open({str(run_dir)!r}, os.O_RDONLY)\n"
        "print(os.read(os.open('secret.txt', os.O_RDONLY, dir_fd=fd), 100))",
    ):
        result = run(code)
        assert result.status is Status.REFUSED, code
        assert "hunter2" not in result.stdout + result.stderr
    allowed = run(f"print(open({str(run_dir / 'secret.txt')!r}).read())", read_paths=[run_dir])
    assert allowed.stdout == "hunter2\n"


def test_the_standard_library_and_devices_can_be_read() -> None:
    code = (
        "import os, inspect, collections\n"
        "print(len(inspect.getsource(collections)) > 0, len(os.urandom(4)))\n"
        "print(open('/dev/null').read() == '')\n"
    )
    result = run(code)
    assert result.status is Status.OK, result.stderr
    assert result.stdout == "True 4\nTrue\n"


def test_sockets_are_refused() -> None:
    for code in (
        "import socket\nsocket.socket()",
        "import socket\nsocket.create_connection(('127.0.0.1', 80))",
        "import urllib.request\nurllib.request.urlopen('http://example.com')",
    ):
        assert run(code).status is Status.REFUSED, code


def test_ctypes_is_refused() -> None:
    assert run("import ctypes\nctypes.CDLL(None).fork()").status is Status.REFUSED
    assert run("import _ctypes").status is Status.REFUSED


def test_the_hook_cannot_be_undone_or_bypassed() -> None:
    for code in (
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
        "import sys\nsys.addaudithook(lambda *a: None)",
        "import gc\ngc.get_objects()",
        "import marshal\nmarshal.loads(marshal.dumps(compile('1', 'x', 'eval')))",
        "(lambda: 0).__code__.replace(co_name='x')",
        "import os\nos.chdir('/')",
        "import _xxsubinterpreters",
        "import syslog\nsyslog.syslog('from the sandbox')",
    ):
        assert run(code).status is Status.REFUSED, code
    gone = run(
        "import os, signal\nprint(hasattr(os, 'pidfd_open'), hasattr(signal, 'pidfd_send_signal'))"
    )
    assert gone.stdout == "False False\n"


def test_the_environment_is_not_leaked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAFL_FAKE_SECRET", "sk-do-not-leak")
    result = run("import os\nprint(sorted(os.environ), os.environ.get('MAFL_FAKE_SECRET'))")
    assert result.status is Status.OK
    assert "sk-do-not-leak" not in result.stdout
    assert result.stdout == "['HOME', 'LANG', 'PYTHONHASHSEED', 'TMPDIR'] None\n"


def test_its_directory_is_removed_afterwards() -> None:
    result = run("import os\nos.mkdir('locked', 0)\nprint(os.getcwd())")
    assert result.ok
    assert not Path(result.stdout.strip()).exists()


def test_the_hash_seed_makes_set_order_reproducible() -> None:
    code = "print(list({'apple', 'banana', 'cherry', 'date', 'elder'}))"
    assert len({run(code).stdout for _ in range(3)}) == 1


def test_concurrent_runs_do_not_interfere() -> None:
    codes = [f"print({i} * {i})" for i in range(12)] + ["while True:\n    pass\n"] * 2
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, codes))
    assert [r.stdout for r in results[:12]] == [f"{i * i}\n" for i in range(12)]
    assert [r.status for r in results[12:]] == [Status.TIMEOUT] * 2


def test_bad_limits_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="cpu_seconds=0"):
        run_python("pass", cpu_seconds=0)
    with pytest.raises(ValueError, match="leaves the sandbox directory"):
        run_python("pass", files={"../x": "y"})


def test_no_process_is_left_behind() -> None:
    before = set(os.listdir("/proc"))
    run("import time\ntime.sleep(60)", timeout=0.3)
    leftovers = {p for p in set(os.listdir("/proc")) - before if p.isdigit()}
    for pid in leftovers:
        cmdline = (
            Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}").exists() else b""
        )
        assert b"mafl-sandbox" not in cmdline


def test_without_pidfd_it_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "pidfd_open")
    assert run("print('polled')").stdout == "polled\n"
    assert run("import time\ntime.sleep(60)", timeout=0.3).status is Status.TIMEOUT
