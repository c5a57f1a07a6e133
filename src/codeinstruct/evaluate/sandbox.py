"""Run untrusted Python programs in real isolation: one fresh process each, many in parallel.

Every program runs in a new `python -I -S -B` process (the base interpreter, not the virtual
environment, and no site-packages: only the standard library is importable) with an empty
environment, stdin from /dev/null, in a new session, under resource limits (address space, CPU
seconds, processes, file size, open files, no core dumps), in a private temporary working
directory that is removed afterwards, with stdout and stderr captured up to a cap (head and tail
kept). The wall-clock timeout kills the program and everything it started.

Where the machine allows it, and this is probed rather than assumed (`probe_isolation`), the
program also runs in its own mount, PID, IPC and UTS namespaces and in a network namespace
(`sandbox_boot.py` does the set-up with plain system calls; no bubblewrap or other binary needed):

  * filesystem: a new root holding only read-only bind mounts of /usr, /bin, /lib* and the Python
    installation, four device nodes, and a size-capped tmpfs at /tmp as working directory. The
    project, home directories and other runs are not visible, and nothing can be written
    outside /tmp;
  * network: a namespace with only a loopback device that is down, so no connection works,
    not even to the host's own 127.0.0.1;
  * processes: the program is PID 1 of its own PID namespace and cannot see or signal any other
    process; when it ends, the kernel kills whatever it left behind, even a child that
    escaped into a new session;
  * privileges: the program never runs as root. As root the evaluator gives each parallel slot its
    own uid (SANDBOX_UID_BASE + slot), so the process-count limit, which Linux counts per uid,
    holds per slot and a fork bomb in one slot does not starve another; as another user, a
    user namespace maps the user's own uid and the program's capabilities end at execve.

Otherwise `isolation.level` is "rlimits": the same process and resource limits, but the
filesystem and the network are the user's, and a program that calls setsid() can outlive the
timeout. Every `SandboxResult` says which level was in force.

Each parallel slot has a small fork server (`python -I -S sandbox_boot.py`, started once), so a
program costs a fork, the namespaces and one interpreter start-up, and the evaluator's own
process, however large (a loaded model), is never forked.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

from codeinstruct.errors import CodeinstructError

BOOT = str(Path(__file__).with_name("sandbox_boot.py"))
SANDBOX_UID_BASE = 2_000_000_000
SYSTEM_PATHS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/ld.so.cache")
# Beyond the program's own timeout: how long the boot process may take to set up and report.
BACKSTOP_S = 15.0
TAIL_BYTES = 4096


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0  # wall clock; CPU seconds are capped at ceil(timeout) + 1
    memory_mb: int = 1024  # address space
    processes: int = 32  # per uid: the program and everything it starts
    file_size_mb: int = 16  # largest file it may write
    open_files: int = 64
    tmpfs_mb: int = 64  # the working directory's size, with namespaces
    output_bytes: int = 64 * 1024  # kept of stdout and of stderr each (plus a 4 KiB tail)


DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True)
class Isolation:
    """What a sandboxed program was actually shut off from, as the probe observed it."""

    level: str  # "namespaces" or "rlimits"
    network_cut: bool
    private_filesystem: bool
    own_pid_namespace: bool
    unprivileged: bool  # the program runs without root, so the process-count limit holds
    note: str = ""  # why namespaces are not in force, when they are not

    def describe(self) -> str:
        if self.level == "namespaces":
            parts = [
                "private read-only filesystem" if self.private_filesystem else "host filesystem",
                "network cut" if self.network_cut else "network reachable",
                "own PID namespace" if self.own_pid_namespace else "host PIDs",
                "unprivileged uid" if self.unprivileged else "root",
                "resource limits",
            ]
            return "namespaces: " + ", ".join(parts)
        who = "unprivileged" if self.unprivileged else "as root, so the process limit does not hold"
        return (
            f"rlimits: resource limits, empty environment, new session, {who}; the filesystem and "
            f"network are the user's" + (f" ({self.note})" if self.note else "")
        )


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # None when the program was killed by a signal
    signal: str | None  # e.g. "SIGKILL", "SIGXCPU"
    timed_out: bool  # wall-clock timeout, or the CPU limit (SIGXCPU)
    stdout: str
    stderr: str
    truncated: bool  # some output was not kept
    seconds: float
    isolation: str  # the Isolation level in force

    def as_dict(self) -> dict:
        return asdict(self)


class _Capture:
    """The first `limit` bytes of a stream and its last TAIL_BYTES; the rest is counted, not kept."""

    def __init__(self, limit: int):
        self.limit, self.head, self.tail, self.dropped = limit, bytearray(), bytearray(), 0

    def feed(self, data: bytes) -> None:
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > TAIL_BYTES:
                self.dropped += len(self.tail) - TAIL_BYTES
                del self.tail[:-TAIL_BYTES]

    def text(self) -> str:
        head = self.head.decode("utf-8", "replace")
        if not self.tail:
            return head
        gap = f"\n[... {self.dropped} bytes not kept ...]\n" if self.dropped else ""
        return head + gap + self.tail.decode("utf-8", "replace")


def default_python() -> str:
    """The base interpreter behind the current one (a venv's python is a link to it)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


@functools.cache
def _bind_paths(python: str) -> tuple[str, ...]:
    """System directories plus the interpreter's installation, outermost first."""
    if python == default_python():
        prefixes = {sys.base_prefix, sys.base_exec_prefix}
    else:
        try:
            out = subprocess.run(
                [python, "-I", "-S", "-c", "import sys; print(sys.prefix); print(sys.exec_prefix)"],
                capture_output=True,
                text=True,
                env={},
                timeout=30,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise CodeinstructError(f"{python}: cannot run it to find its installation ({e})") from None
        prefixes = set(out.stdout.split())
    paths = [p for p in SYSTEM_PATHS if os.path.lexists(p)]
    covered = [os.path.realpath(p) for p in paths if os.path.isdir(p)]
    for extra in sorted({os.path.realpath(p) for p in prefixes} | {os.path.dirname(python)}):
        if not any(extra == c or extra.startswith(c + "/") for c in covered):
            paths.append(extra)
            covered.append(extra)
    return tuple(paths)


class _Server:
    """One fork server (sandbox_boot.py) for one slot: runs that slot's programs one at a time."""

    def __init__(self, mode: str, slot: int, python: str):
        self.mode = mode
        self.dir = tempfile.mkdtemp(prefix="codeinstruct-sandbox-")
        os.chmod(self.dir, 0o755)
        os.mkdir(os.path.join(self.dir, "root"))  # the mount point of each run's new root
        self.count = 0
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        as_root = os.geteuid() == 0
        config = {
            "mode": mode,
            "python": python,
            "root": os.path.join(self.dir, "root"),
            "binds": list(_bind_paths(python)),
            "socket_fd": theirs.fileno(),
            "uid": SANDBOX_UID_BASE + slot if as_root and mode == "namespaces" else os.getuid(),
        }
        self.log = open(os.path.join(self.dir, "server.log"), "wb")  # noqa: SIM115 - open while the server runs
        try:
            self.proc = subprocess.Popen(
                [python, "-I", "-S", BOOT, json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
                env={},
                cwd=self.dir,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as e:
            self.close()
            raise CodeinstructError(f"cannot start the sandbox with {python} ({e.strerror})") from None
        finally:
            theirs.close()

    def run(self, source: str, limits: SandboxLimits) -> tuple[dict, SandboxResult]:
        """Run one program; the status the runner reported, and the result."""
        self.count += 1
        program = os.path.join(self.dir, f"program-{self.count}.py")
        work = os.path.join(self.dir, f"work-{self.count}")
        Path(program).write_text(source, encoding="utf-8")
        os.chmod(program, 0o644)
        os.mkdir(work, 0o700)
        status: dict = {}
        out, err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
        start = time.monotonic()
        backstop_hit = False
        pipes = [os.pipe() for _ in range(3)]
        try:
            request = {"program": program, "work": work, "limits": asdict(limits)}
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [w for _, w in pipes])
            except OSError as e:
                raise CodeinstructError(f"the sandbox server is gone ({e.strerror}){self._last_log_line()}") from None
            finally:
                for _, w in pipes:
                    os.close(w)
            status_buf = bytearray()
            readers = {pipes[0][0]: out.feed, pipes[1][0]: err.feed, pipes[2][0]: status_buf.extend}
            backstop = start + limits.timeout_s + BACKSTOP_S
            with selectors.DefaultSelector() as sel:
                for fd in readers:
                    sel.register(fd, selectors.EVENT_READ)
                while sel.get_map():
                    if time.monotonic() > backstop:
                        backstop_hit = True
                        break
                    for key, _ in sel.select(timeout=0.5):
                        data = os.read(key.fd, 65536)
                        if data:
                            readers[key.fd](data)
                        else:
                            sel.unregister(key.fd)
            for line in status_buf.decode(errors="replace").splitlines():
                if line.strip():
                    status.update(json.loads(line))
        finally:
            if backstop_hit:
                for pid in (status.get("pid"), status.get("runner")):
                    if pid:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGKILL)  # PID 1 of a namespace takes it with it
            for r, _ in pipes:
                os.close(r)
            with contextlib.suppress(OSError):
                os.unlink(program)
            shutil.rmtree(work, ignore_errors=True)
        if not status:
            raise CodeinstructError(f"the sandbox server stopped without a report{self._last_log_line()}")
        if "runner_error" in status:
            raise CodeinstructError(f"the sandbox could not run a program: {status['runner_error']}")
        sig = status.get("signal")
        if "setup_error" in status:
            timed_out = False
        elif backstop_hit or ("exit_code" not in status and sig is None):  # we had to kill it
            timed_out, sig = True, "SIGKILL"
        else:
            timed_out = bool(status.get("timed_out")) or sig == "SIGXCPU"
        result = SandboxResult(
            exit_code=status.get("exit_code"),
            signal=sig,
            timed_out=timed_out,
            stdout=out.text(),
            stderr=err.text(),
            truncated=bool(out.tail or err.tail),
            seconds=time.monotonic() - start,
            isolation=self.mode,
        )
        return status, result

    def _last_log_line(self) -> str:
        self.log.flush()
        lines = Path(self.log.name).read_text(errors="replace").strip().splitlines()
        return f": {lines[-1]}" if lines else ""

    def close(self) -> None:
        self.sock.close()  # the server sees EOF and exits
        proc = getattr(self, "proc", None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_program(
    source: str,
    limits: SandboxLimits = DEFAULT_LIMITS,
    *,
    isolation: Isolation | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run one Python program in the sandbox and return how it ended."""
    return run_programs([source], limits, workers=1, isolation=isolation, python=python)[0]


def run_programs(
    sources: Sequence[str],
    limits: SandboxLimits = DEFAULT_LIMITS,
    *,
    workers: int | None = None,
    isolation: Isolation | None = None,
    python: str | None = None,
    on_result: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Run many programs, at most `workers` at a time; results in input order.

    The default is two per CPU: much of a short program's time is spent waiting on process and
    namespace creation and teardown, not computing.

    Each worker slot has its own fork server and, when the evaluator is root, its own uid.
    `on_result(index, result)` is called from the calling thread as each one finishes.
    """
    python = python or default_python()
    iso = isolation or probe_isolation(python=python)
    workers = max(1, min(workers or 2 * (os.cpu_count() or 1), len(sources)))
    results: list[SandboxResult | None] = [None] * len(sources)
    if not sources:
        return []
    servers: queue.SimpleQueue[_Server] = queue.SimpleQueue()
    started: list[_Server] = []

    def one(index: int, source: str) -> tuple[int, SandboxResult]:
        server = servers.get()
        try:
            status, result = server.run(source, limits)
        finally:
            servers.put(server)
        if "setup_error" in status:
            raise CodeinstructError(
                f"sandbox set-up failed ({status['setup_error']}), although the probe found "
                f"'{iso.level}' isolation available"
            )
        return index, result

    try:
        for slot in range(workers):
            started.append(_Server(iso.level, slot, python))
            servers.put(started[-1])
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(one, i, s) for i, s in enumerate(sources)]
            try:
                for future in as_completed(futures):
                    index, result = future.result()
                    results[index] = result
                    if on_result is not None:
                        on_result(index, result)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        for server in started:
            server.close()
    return results  # type: ignore[return-value]


_PROBE = """\
import json, os, socket
seen = {"uid": os.getuid(), "pid": os.getpid()}
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
    seen["connected"] = True
except OSError:
    seen["connected"] = False
seen["sees_host"] = os.path.exists(HOST_DIR)
try:
    with open(os.path.join(HOST_DIR, "written"), "w") as f:
        f.write("x")
    seen["wrote_host"] = True
except OSError:
    seen["wrote_host"] = False
print(json.dumps(seen))
"""


def probe_isolation(mode: str = "auto", python: str | None = None) -> Isolation:
    """Find out, by running a probe program, which isolation this machine gives (cached per process).

    The probe tries to connect to a socket the evaluator listens on, to see and write a host
    directory, and reports its uid and pid; the result states what was observed, not what was
    attempted. mode "rlimits" skips the namespaces.
    """
    if mode not in ("auto", "rlimits"):
        raise CodeinstructError(f"unknown sandbox mode '{mode}' (auto or rlimits)")
    return _probe(mode, python or default_python())


@functools.cache
def _probe(mode: str, python: str) -> Isolation:
    note = ""
    if mode == "auto":
        seen, error = _probe_run("namespaces", python)
        if seen is not None:
            return _isolation("namespaces", seen)
        note = f"namespaces unavailable: {error}"
    seen, error = _probe_run("rlimits", python)
    if seen is None:
        raise CodeinstructError(f"the sandbox cannot run Python programs on this machine ({error})")
    return _isolation("rlimits", seen, note)


def _isolation(level: str, seen: dict, note: str = "") -> Isolation:
    return Isolation(
        level=level,
        network_cut=not seen["connected"],
        private_filesystem=not seen["sees_host"] and not seen["wrote_host"],
        own_pid_namespace=seen["pid"] == 1,
        unprivileged=seen["uid"] != 0,
        note=note,
    )


def _probe_run(mode: str, python: str) -> tuple[dict | None, str]:
    host_dir = tempfile.mkdtemp(prefix="codeinstruct-probe-")
    os.chmod(host_dir, 0o777)  # writable for any uid: only isolation may stop the probe writing here
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            source = _PROBE.replace("PORT", str(listener.getsockname()[1])).replace("HOST_DIR", repr(host_dir))
            with _Server(mode, 0, python) as server:
                status, result = server.run(source, SandboxLimits(timeout_s=10))
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
    if "setup_error" in status:
        return None, status["setup_error"]
    try:
        return json.loads(result.stdout), ""
    except ValueError:
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.exit_code}, signal {result.signal}"])[-1]
        return None, reason
