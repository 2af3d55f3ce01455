"""Running untrusted Python (model-written code) in a separate, limited, watched process.

:func:`run_python` runs a program in a fresh interpreter and reports how it ended as a
:class:`SandboxResult`. The layers, outermost first:

* **A separate process** (``sys.executable -s -S -B -P``: no user or site packages, no bytecode
  written, no script directory on ``sys.path``) in a new session, so its whole process group is
  killed with SIGKILL when it ends or runs out of wall-clock time. The caller never shares
  memory, signals or a crash with it; many runs may go on at once from several threads.
* **A fresh temporary working directory**, removed afterwards, as its ``cwd``, ``HOME`` and
  ``TMPDIR``; **an environment built from scratch** (never the caller's ``os.environ``, so no
  API key can leak); stdin is ``/dev/null``; no file descriptor but stdout, stderr and the
  refusal log is inherited, and the program text and those files lie outside its directory.
* **Resource limits**, set by the child on itself before the program is even compiled: CPU time
  (``RLIMIT_CPU``), address space (``RLIMIT_AS``), the size of any file it writes, stdout and
  stderr included (``RLIMIT_FSIZE``, so a huge print fills neither memory nor disk), no core
  files, a few open files, and, where the child does not run as root, no new processes or
  threads at all (``RLIMIT_NPROC`` does not bind root). They are set in the child rather than
  in a ``preexec_fn`` because a ``preexec_fn`` can deadlock a caller that has other threads
  (the debate grades from several), as the :mod:`subprocess` documentation warns.
* **An audit hook** (:func:`sys.addaudithook`, PEP 578) installed before the program runs. It
  refuses, by raising :class:`PermissionError`: creating processes (``os.fork``, ``os.exec*``,
  ``os.posix_spawn``, ``os.system``, ``subprocess.Popen``, ``pty``) and signalling them
  (``os.kill``, ``os.killpg``, ``signal.pthread_kill``; the unaudited ``pidfd_open`` and
  ``pidfd_send_signal`` are deleted); every ``socket.*`` and ``syslog.*`` event; ``ctypes``,
  ``_posixsubprocess``, subinterpreters and ``sys.remote_exec`` (each a way around the hook);
  raising resource limits; adding audit hooks; building code objects or unmarshalling outside
  the import system; ``gc`` walks that could find the hook's state; changing directory;
  writing, creating, deleting, renaming, truncating or changing the mode or times of anything
  outside its directory; links; relative paths that climb above its directory (relative to a
  descriptor of a subdirectory they would land elsewhere than checked); opening a directory
  outside it; opening anything that is not a regular file but ``/dev/null``, ``/dev/zero``,
  ``/dev/urandom`` and ``/dev/random``; reading, listing or importing from anywhere but its
  directory, the interpreter's own standard library and the caller's ``read_paths``; SQLite
  databases outside its directory and SQLite extensions. Each refusal is logged to a file out
  of the program's reach, so a program that catches the error still ends with status
  ``refused``.

What it does **not** protect against, plainly:

* It is not a kernel sandbox: no container, namespaces, seccomp filter, chroot or separate
  user. PEP 578 says outright that audit hooks are not a security boundary: CPython has
  unaudited ways to do things (for instance ``os.mknod``, ``os.mkfifo``, ``os.chroot``,
  ``os.setuid`` are unaudited; their effects are limited by the checks on ``open``, not
  refused), crafted bytecode reaching the import system's own unmarshalling, or an interpreter
  bug can corrupt memory and then do anything the process's user may. It stops the accidents
  and obvious attempts of generated code, not a determined attacker: run untrusted code from
  the open internet in a container or VM as well.
* As root (this project's usual machine) the child is root: file permissions protect nothing,
  ``RLIMIT_NPROC`` does not bind, and whatever slips past the hook runs with full privileges.
* The program runs in one interpreter with whatever harness checks it (a test runner, the
  HumanEval grader): it can find and forge or tamper with the harness's results, exit early
  with any status, or print what the harness prints. Results are evidence about honest code,
  not proof against adversarial code.
* Files may be probed: ``os.stat``, ``os.path.exists`` and ``os.access`` are unaudited, so the
  existence, size and times of any file are visible (never its contents or a directory
  listing).
* Shared machine resources: each run's CPU time, memory and file sizes are bounded, not the
  number of files it creates in its directory (disk), the CPU of the whole machine (many
  concurrent runs slow everything down) or I/O bandwidth; as root a program may use threads,
  bounded only by its address space.
* Checks look at paths when an operation is audited; a program that races its own threads to
  change a path object or swap a file between the check and the use can win that race.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SandboxResult", "Status", "run_python"]

# The child's exit code when the program ran out of memory (a MemoryError reached the top).
_EXIT_MEMORY = 86


class Status(enum.StrEnum):
    """How a sandboxed program ended; everything but ``OK`` is a failure."""

    OK = "ok"  # exit code 0
    ERROR = "error"  # a nonzero exit code: an uncaught exception, sys.exit(1), os._exit(3)
    TIMEOUT = "timeout"  # out of wall-clock or CPU time
    MEMORY = "memory"  # out of address space (MemoryError)
    OUTPUT_LIMIT = "output-limit"  # stdout or stderr reached ``max_output`` bytes
    REFUSED = "refused"  # tried something the sandbox forbids (see ``SandboxResult.refused``)
    KILLED = "killed"  # ended by a signal: a segfault, os.abort(), a kill from outside


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one :func:`run_python`.

    ``returncode`` is the exit code, negative for a signal (``-11`` is SIGSEGV), None where the
    sandbox killed the program for running out of wall-clock time. ``stdout`` and ``stderr``
    hold at most ``max_output`` bytes each (decoded as UTF-8, bad bytes replaced).
    ``refused`` names the operations the sandbox refused, in order.
    """

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    refused: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


def run_python(
    code: str,
    *,
    timeout: float = 10.0,
    cpu_seconds: int = 5,
    memory_mb: int = 512,
    max_output: int = 1 << 20,
    max_open_files: int = 64,
    files: Mapping[str, str | bytes] | None = None,
    read_paths: Sequence[str | os.PathLike[str]] = (),
    hash_seed: int = 0,
) -> SandboxResult:
    """Run ``code`` as the main program of a fresh, limited interpreter and say how it ended.

    ``timeout`` is wall-clock seconds, ``cpu_seconds`` CPU time, ``memory_mb`` the address
    space; ``max_output`` bounds stdout, stderr and every file the program writes (a program
    that reaches it ends with status ``output-limit``). ``files`` are written into the
    program's directory first (name relative to it, contents). ``read_paths`` are extra files
    or directories it may read besides its directory and the standard library. ``hash_seed``
    fixes ``PYTHONHASHSEED`` so set order, and so the outcome, is the same on every run.

    Never raises for anything the program does; raises ValueError for a bad limit and OSError
    if the interpreter cannot be started at all. See the module docstring for what is and is
    not enforced.
    """
    if timeout <= 0 or cpu_seconds < 1 or memory_mb < 32 or max_output < 1 or max_open_files < 8:
        raise ValueError(
            f"sandbox limits out of range: timeout={timeout!r} (> 0 s), cpu_seconds="
            f"{cpu_seconds!r} (>= 1), memory_mb={memory_mb!r} (>= 32), max_output="
            f"{max_output!r} (>= 1), max_open_files={max_open_files!r} (>= 8)"
        )
    started = time.monotonic()
    root = os.path.realpath(tempfile.mkdtemp(prefix="mafl-sandbox-"))
    try:
        return _run(
            code,
            root,
            started=started,
            timeout=timeout,
            limits=(cpu_seconds, memory_mb << 20, max_output, max_open_files),
            files=files or {},
            read_paths=[os.path.realpath(p) for p in read_paths],
            hash_seed=hash_seed,
        )
    finally:
        _remove_tree(root)


def _run(
    code: str,
    root: str,
    *,
    started: float,
    timeout: float,
    limits: tuple[int, int, int, int],
    files: Mapping[str, str | bytes],
    read_paths: list[str],
    hash_seed: int,
) -> SandboxResult:
    max_output = limits[2]
    # The program's own directory is a subdirectory: the program text and the output files
    # lie beside it, out of its reach (though it holds descriptors of the output files).
    workdir = os.path.join(root, "work")
    os.mkdir(workdir)
    main = os.path.join(root, "main.py")
    Path(main).write_text(code, encoding="utf-8", errors="surrogatepass")
    for name, content in files.items():
        target = Path(os.path.normpath(os.path.join(workdir, name)))
        if not str(target).startswith(workdir + os.sep):
            raise ValueError(f"file name {name!r} leaves the sandbox directory; use a plain name")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    paths = {name: os.path.join(root, name) for name in ("stdout", "stderr", "refused")}
    env = {
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": str(hash_seed),
    }
    # -I would ignore PYTHONHASHSEED with every other PYTHON* variable (-E); the environment
    # is built from scratch, so -s -P with -S and -B give the same isolation plus a fixed seed.
    argv = [sys.executable, "-s", "-S", "-B", "-P", "-X", "utf8", "-c", _BOOTSTRAP]
    with (
        open(paths["stdout"], "wb") as out,
        open(paths["stderr"], "wb") as err,
        open(paths["refused"], "wb") as refused,
    ):
        argv += [workdir, main, str(refused.fileno()), str(_EXIT_MEMORY), *map(str, limits)]
        proc = subprocess.Popen(
            [*argv, *read_paths],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=workdir,
            env=env,
            close_fds=True,
            pass_fds=(refused.fileno(),),
            start_new_session=True,
        )
    status_code, cpu, timed_out = _wait(proc, started + timeout)
    seconds = time.monotonic() - started
    returncode = None if timed_out else os.waitstatus_to_exitcode(status_code)
    stdout, stdout_full = _read(paths["stdout"], max_output)
    stderr, stderr_full = _read(paths["stderr"], max_output)
    refusals = tuple(_read(paths["refused"], 1 << 16)[0].splitlines())
    if timed_out or returncode == -signal.SIGXCPU or cpu >= limits[0]:
        status = Status.TIMEOUT
    elif returncode == _EXIT_MEMORY and stderr.rstrip().endswith("MemoryError"):
        status = Status.MEMORY
    elif stdout_full or stderr_full:
        status = Status.OUTPUT_LIMIT
    elif refusals:
        status = Status.REFUSED
    elif returncode is not None and returncode < 0:
        status = Status.KILLED
    elif returncode:
        status = Status.ERROR
    else:
        status = Status.OK
    return SandboxResult(status, returncode, stdout, stderr, seconds, refusals)


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, float, bool]:
    """Wait for the child until ``deadline`` and reap it: (wait status, CPU seconds it used,
    whether it ran out of time). Its whole process group is killed either way."""
    pid = proc.pid
    timed_out = False
    try:
        if not _exited_by(pid, deadline):
            timed_out = True
    finally:
        _kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits for it
    return status, usage.ru_utime + usage.ru_stime, timed_out


def _exited_by(pid: int, deadline: float) -> bool:
    """Whether ``pid`` exits before ``deadline``; it is left unreaped for :func:`os.wait4`."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux, or before 5.3): poll
        delay = 0.001
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, 0.05)
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    try:
        # poll, not select: a busy caller's descriptors can number past select's 1024.
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(deadline - time.monotonic(), 0) * 1000))
    finally:
        os.close(pidfd)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, signal.SIGKILL)


def _read(path: str, limit: int) -> tuple[str, bool]:
    """The first ``limit`` bytes of ``path`` as text, and whether the file reached ``limit``."""
    try:
        with open(path, "rb") as file:
            data = file.read(limit)
    except OSError:
        return "", False
    return data.decode("utf-8", errors="replace"), len(data) >= limit


def _remove_tree(path: str) -> None:
    """Remove the program's directory even where it made parts of it unreadable."""

    def unlock(function: object, name: str, _error: object) -> None:
        parent = os.path.dirname(name)
        for target in (parent, name):
            with contextlib.suppress(OSError):
                os.chmod(target, stat.S_IRWXU)
        try:
            if os.path.isdir(name) and not os.path.islink(name):
                shutil.rmtree(name, ignore_errors=True)
            else:
                os.unlink(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=unlock)


# The child's first code: limits, then the audit hook, then the program. It keeps the hook's
# state in closures and calls only C functions bound before the program runs, so a program
# that patches ``os.path``, ``builtins`` or the hook's module globals changes nothing.
_BOOTSTRAP = r"""
import sys, os, posix, resource, signal
workdir, main, refusals_fd, exit_memory, cpu, memory, output, nofile = sys.argv[1:9]
read_roots = sys.argv[9:]
cpu, memory, output, nofile = int(cpu), int(memory), int(output), int(nofile)
for limit, value in (
    (resource.RLIMIT_CPU, (cpu, cpu + 1)),
    (resource.RLIMIT_AS, (memory, memory)),
    (resource.RLIMIT_FSIZE, (output, output)),
    (resource.RLIMIT_CORE, (0, 0)),
    (resource.RLIMIT_NOFILE, (nofile, nofile)),
):
    resource.setrlimit(limit, value)
if posix.geteuid() != 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
with open(main, encoding="utf-8", errors="surrogateescape") as file:
    source = file.read()
try:
    program = compile(source, "main.py", "exec")
except BaseException:
    import traceback
    traceback.print_exc()
    sys.exit(1)
# Unaudited ways to signal any process by pid file descriptor.
for module, name in ((signal, "pidfd_send_signal"), (posix, "pidfd_open")):
    try:
        delattr(module, name)
    except AttributeError:
        pass
for module in (sys.modules.get("_signal"), os):
    for attribute in ("pidfd_send_signal", "pidfd_open"):
        if module is not None and hasattr(module, attribute):
            delattr(module, attribute)
roots = [p for p in sys.path if p] + read_roots


def make_hook(workdir, roots, refusals_fd):
    import posix as _posix
    _lstat, _stat, _write, _getcwd = _posix.lstat, _posix.stat, _posix.write, _posix.getcwd
    _str, _bytes, _int, _tuple, _frame = str, bytes, int, tuple, sys._getframe
    _isinstance, _len, _repr = isinstance, len, repr
    _error = PermissionError
    denied_prefixes = ("socket.", "ctypes.", "syslog.")  # syslog: a socket the hook never sees
    denied = frozenset((
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
        "os.startfile", "os.kill", "os.killpg", "signal.pthread_kill", "subprocess.Popen",
        "pty.spawn", "resource.setrlimit", "resource.prlimit", "sys.addaudithook",
        "code.__new__", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
        "os.chdir", "os.link", "os.symlink", "sqlite3.enable_load_extension",
        "sqlite3.load_extension", "cpython.PyInterpreterState_New", "os.add_dll_directory",
        "winreg.ConnectRegistry", "webbrowser.open", "sys.remote_exec",
        "cpython.remote_debugger_script",
    ))
    denied_modules = frozenset((
        "ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
        "_interpreters", "_interpchannels", "_interpqueues", "_testcapi", "_testinternalcapi",
        "_testmultiphase", "_testsinglephase", "_testbuffer", "_testimportmultiple",
        "_ctypes_test", "_dbm", "_gdbm", "posix", "signal", "_signal", "resource",
    ))
    changes = frozenset((
        "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.utime", "shutil.rmtree",
        "os.chmod", "os.chown", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr",
    ))
    devices = frozenset(("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"))
    write_flags = _posix.O_WRONLY | _posix.O_RDWR | _posix.O_CREAT | _posix.O_TRUNC
    write_flags |= _posix.O_APPEND
    inside = workdir + "/"
    logged = [0]

    def normal(path):
        # Lexical: the directory has no symlinks (creating links is refused) and the working
        # directory never moves (chdir is refused). A relative path that climbs above the
        # directory on the way counts as outside, wherever it ends: relative to a descriptor
        # of a subdirectory (``dir_fd``, which the audit event does not show) it would land
        # somewhere else.
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        elif not _isinstance(path, _str):
            path = path.__fspath__()
            if _isinstance(path, _bytes):
                path = path.decode("utf-8", "surrogateescape")
        relative = not path.startswith("/")
        parts = []
        for part in path.split("/"):
            if part == "..":
                if not parts and relative:
                    return "/\0outside"
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        joined = "/".join(parts)
        return (inside + joined if joined else workdir) if relative else "/" + joined

    def within(path, directory):
        return path == directory or path.startswith(directory + "/")

    def writable(path):
        return within(normal(path), workdir)

    def readable(path):
        path = normal(path)
        if within(path, workdir) or path in devices:
            return True
        for root in roots:
            if within(path, root):
                return True
        return False

    def refuse(event, args):
        if logged[0] < 20:  # a loop of refusals must not fill the log
            try:
                _write(refusals_fd, (event + " " + _repr(args)[:200] + "\n").encode())
            except OSError:
                pass
        logged[0] += 1
        raise _error(
            f"the sandbox refuses {event}{_repr(args)[:200]}: sandboxed code may not create "
            "processes, use the network or ctypes, or touch files outside its directory"
        )

    def check_open(args):
        path, mode, flags = args
        if _isinstance(path, _int):
            return True
        target = normal(path)
        try:
            info = _stat(target)
        except (OSError, ValueError):  # missing, or the "outside" marker
            info = None
        if target in devices:
            return True
        kind = None if info is None else info.st_mode & 0o170000
        if kind == 0o040000:  # a directory: its descriptor is safe only inside (see normal)
            return within(target, workdir)
        if kind is not None and kind != 0o100000:
            return False  # a device, fifo or socket
        writes = (flags or 0) & write_flags or (_isinstance(mode, _str) and (
            "w" in mode or "a" in mode or "x" in mode or "+" in mode))
        return writable(target) if writes else readable(target)

    def hook(event, args):
        if event in denied or event.startswith(denied_prefixes):
            refuse(event, args)
        elif event == "open":
            if not check_open(args):
                refuse(event, args)
        elif event == "import":
            name, filename = args[0], args[1]
            if name in denied_modules or name.split(".")[0] in denied_modules:
                refuse(event, (name,))
            if filename is not None and not readable(filename):
                refuse(event, (name, filename))
        elif event in ("os.listdir", "os.scandir", "glob.glob"):
            if args[0] is not None and not _isinstance(args[0], _int) and not readable(args[0]):
                refuse(event, args)
            if args[0] is None and not readable("."):
                refuse(event, args)
        elif event in changes:
            # A descriptor may be read-only yet allow fchmod or futimes (as root, on the
            # standard library's files): only truncation, which needs a writable one, takes it.
            path = args[0]
            if _isinstance(path, _int) if event != "os.truncate" else False:
                refuse(event, args)
            if not _isinstance(path, _int) and not writable(path):
                refuse(event, args)
        elif event == "os.rename":
            if not writable(args[0]) or not writable(args[1]):
                refuse(event, args)
        elif event in ("marshal.loads", "marshal.load"):
            # The import system unmarshals the standard library's bytecode; a program that
            # unmarshals its own could build a code object that corrupts memory.
            caller = _frame(1).f_code.co_filename
            if not caller.startswith("<frozen importlib"):
                refuse(event, ())
        elif event == "sqlite3.connect":
            database = args[0]
            if database not in (":memory:", b":memory:", "") and not writable(database):
                refuse(event, args)

    return hook


sys.addaudithook(make_hook(workdir, roots, int(refusals_fd)))
del make_hook
namespace = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
try:
    exec(program, namespace)
except MemoryError:
    posix.write(2, b"\nMemoryError\n")
    posix._exit(int(exit_memory))
"""
