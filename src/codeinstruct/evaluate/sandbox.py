"""Run untrusted Python programs in real isolation: a fresh process each, many in parallel.

Each parallel slot has a warm interpreter (`python -I -S sandbox_boot.py`, the base interpreter,
not the virtual environment, and no site-packages: only the standard library is importable) that
sets up the slot's isolation once and then forks a fresh child per program. Every program runs in
its own forked process with an empty environment, stdin from /dev/null, in a new session, under
resource limits (address space, CPU seconds, processes, file size, open files, no core dumps), in
a private temporary working directory that is removed afterwards, with every inherited descriptor
closed and stdout and stderr captured up to a cap (head and tail kept). A program costs a fork and
a few namespaces, not an interpreter start-up, and the evaluator's own process, however large (a
loaded model), is never forked.

Where the machine allows it, and this is probed rather than assumed (`probe_isolation`), the
program also runs in its own mount, PID and IPC namespaces, and its slot in its own network and
UTS namespaces (`sandbox_boot.py` does the set-up with plain system calls; no bubblewrap or other
binary needed):

  * filesystem: a new root holding only read-only bind mounts of /usr, /bin, /lib* and the Python
    installation, four device nodes, and a fresh size-capped tmpfs at /tmp per program as its
    working directory. The project, home directories and other runs are not visible, and
    nothing can be written outside /tmp;
  * network: a namespace with only a loopback device that is down, so no connection works,
    not even to the host's own 127.0.0.1;
  * processes: the program is PID 1 of its own PID namespace and cannot see or signal any other
    process; when it ends, the kernel kills whatever it left behind, even a child that
    escaped into a new session;
  * privileges: the program never runs as root and holds no capabilities. As root the evaluator
    gives each parallel slot its own uid (SANDBOX_UID_BASE + slot), so the process-count limit,
    which Linux counts per uid, holds per slot and a fork bomb in one slot does not starve
    another; as another user, a user namespace maps the user's own uid.

Otherwise `isolation.level` is "rlimits": the same process and resource limits, but the
filesystem and the network are the user's, and a program that calls setsid() can outlive the
timeout (unless a cgroup catches it, below). Every `SandboxResult` says which level was in force.

Timeouts do not depend on the machine's load. `SandboxLimits.timeout_s` is a budget of CPU
seconds, for the program and every process it starts together: where this process may make
cgroups (v2, or v1 cpuacct; probed), each slot's programs run in the slot's own cgroup, whose
CPU time is read; otherwise the program's own process is measured, and RLIMIT_CPU holds on each
process. The wall clock is a backstop only (`wall_s`, several times the budget), for a program
that sleeps or is starved, and `run_programs` re-runs a program the wall clock stopped alone,
with no other program beside it, before it records the timeout. Each slot's cgroup also gets an
equal CPU share (cgroup v2 cpu.weight or v1 cpu.shares, where the kernel offers the cpu
controller), so a fork bomb in one slot gets no more CPU than one process. A result says how its
timeout was decided (`timeout_by`: "cpu", "wall", or "wall-rerun" when the re-run alone ran out of
wall time too) and how many CPU seconds the program used.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Self

from codeinstruct.errors import CodeinstructError

BOOT = str(Path(__file__).with_name("sandbox_boot.py"))
SANDBOX_UID_BASE = 2_000_000_000
SYSTEM_PATHS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/ld.so.cache")
# Beyond the program's wall-clock backstop: how long the boot process may take to set up and report.
BACKSTOP_S = 15.0
TAIL_BYTES = 4096
PIPE_BYTES = 1 << 20
# The wall-clock backstop by default: this many times the CPU budget, and at least WALL_MIN_EXTRA_S more.
WALL_FACTOR = 4.0
WALL_MIN_EXTRA_S = 2.0
CGROUP_PREFIX = "codeinstruct-sandbox"
PROCESS_CPU_TIME = "per process (RLIMIT_CPU)"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0  # CPU seconds of the program and all its processes; RLIMIT_CPU ceil(timeout) + 1 each
    wall_timeout_s: float | None = None  # the backstop; None: WALL_FACTOR x timeout_s
    memory_mb: int = 1024  # address space
    processes: int = 32  # per uid: the program and everything it starts
    file_size_mb: int = 16  # largest file it may write
    open_files: int = 64
    tmpfs_mb: int = 64  # the working directory's size, with namespaces
    output_bytes: int = 64 * 1024  # kept of stdout and of stderr each (plus a 4 KiB tail)

    @property
    def wall_s(self) -> float:
        """Wall-clock seconds after which a program is stopped whatever CPU time it used."""
        if self.wall_timeout_s is not None:
            return self.wall_timeout_s
        return max(WALL_FACTOR * self.timeout_s, self.timeout_s + WALL_MIN_EXTRA_S)


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
    cpu_time: str = PROCESS_CPU_TIME  # how a program's CPU time is measured: "cgroup v2 cpu.stat", ...
    cpu_shares: str = "none"  # how slots get equal CPU shares: "cgroup v2 cpu.weight", "cgroup v1 cpu.shares"

    @property
    def cgroups(self) -> bool:
        return self.cpu_time != PROCESS_CPU_TIME

    def describe(self) -> str:
        timing = f"; timeouts by CPU time ({self.cpu_time}), CPU shares: {self.cpu_shares}"
        if self.level == "namespaces":
            parts = [
                "private read-only filesystem" if self.private_filesystem else "host filesystem",
                "network cut" if self.network_cut else "network reachable",
                "own PID namespace" if self.own_pid_namespace else "host PIDs",
                "unprivileged uid" if self.unprivileged else "root",
                "resource limits",
            ]
            return "namespaces: " + ", ".join(parts) + timing
        who = "unprivileged" if self.unprivileged else "as root, so the process limit does not hold"
        return (
            f"rlimits: resource limits, empty environment, new session, {who}; the filesystem and "
            f"network are the user's" + (f" ({self.note})" if self.note else "") + timing
        )


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # None when the program was killed by a signal
    signal: str | None  # e.g. "SIGKILL", "SIGXCPU"
    timed_out: bool  # the CPU budget was used, or the wall-clock backstop ran out
    stdout: str
    stderr: str
    truncated: bool  # some output was not kept
    seconds: float  # wall clock
    isolation: str  # the Isolation level in force
    timeout_by: str | None = None  # "cpu", "wall" or "wall-rerun" (also ran out of wall time re-run alone)
    cpu_seconds: float | None = None  # CPU time of the program and its processes, as measured
    reran: bool = False  # the wall clock stopped it beside other programs, so it was run again alone

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
        if len(data) >= TAIL_BYTES:  # a flood: only the end of it can be kept
            self.dropped += len(self.tail) + len(data) - TAIL_BYTES
            self.tail = bytearray(data[-TAIL_BYTES:])
        elif data:
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


@dataclass(frozen=True)
class _CgroupHomes:
    """This process's own cgroup directories where it may make child cgroups (None: not here)."""

    v2: str | None
    v1_cpu: str | None
    v1_cpuacct: str | None


@functools.cache
def _cgroup_homes() -> _CgroupHomes:
    """Read from /proc/self/mountinfo and /proc/self/cgroup: writable cgroup mounts and where we are in them."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        memberships = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return _CgroupHomes(None, None, None)
    own: dict[str, str] = {}  # controllers ("" for v2) -> our path in that hierarchy
    for line in memberships:
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
    found: dict[str, str] = {}
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 6 or len(rest) < 3 or "ro" in fields[5].split(","):
            continue
        root, point, fstype, options = fields[3], fields[4], rest[0], rest[2].split(",")
        wanted = [("v2", "")] if fstype == "cgroup2" else []
        if fstype == "cgroup":
            for controllers in own:
                names = controllers.split(",")
                wanted += [(f"v1_{c}", controllers) for c in ("cpu", "cpuacct") if c in names and c in options]
        for key, controllers in wanted:
            path = own.get(controllers)
            if key in found or path is None:
                continue
            if root != "/" and path.startswith(root):
                path = path[len(root) :]
            home = point + path.rstrip("/")
            if os.path.isdir(home) and os.access(home, os.W_OK):
                found[key] = home
    return _CgroupHomes(found.get("v2"), found.get("v1_cpu"), found.get("v1_cpuacct"))


class _SlotCgroups:
    """One cgroup per slot, beside this process's own, made for one batch of runs and removed after.

    A slot's programs are put into its cgroup (v2, and v1 cpu or cpuacct where those are separate
    hierarchies): its CPU time is the programs' (children and escaped sessions included), v2's
    cgroup.kill ends them all, and each slot has the default weight, the share of one process.
    """

    _batches = itertools.count()

    def __init__(self) -> None:
        self.tag = f"{CGROUP_PREFIX}-{os.getpid()}-{next(self._batches)}"
        self.made: list[str] = []

    def plan(self, slot: int) -> dict | None:
        """What sandbox_boot needs for one slot: files to join, to read CPU time from, to kill; None: no cgroup."""
        homes = _cgroup_homes()
        name = f"{self.tag}-{slot}"
        plan: dict = {"join": [], "usage": None, "usage_kind": None, "kill": None}
        cpu_time, shares = PROCESS_CPU_TIME, "none"
        v2 = self._make(homes.v2, name)
        if v2 is not None:
            plan["join"].append(os.path.join(v2, "cgroup.procs"))
            if _has_line(os.path.join(v2, "cpu.stat"), "usage_usec"):
                plan.update(usage=os.path.join(v2, "cpu.stat"), usage_kind="v2")
                cpu_time = "cgroup v2 cpu.stat"
            if os.path.exists(os.path.join(v2, "cgroup.kill")):
                plan["kill"] = os.path.join(v2, "cgroup.kill")
            if os.path.exists(os.path.join(v2, "cpu.weight")):
                shares = "cgroup v2 cpu.weight"
        if shares == "none":
            v1 = self._make(homes.v1_cpu, name)
            if v1 is not None:
                plan["join"].append(os.path.join(v1, "cgroup.procs"))
                shares = "cgroup v1 cpu.shares"
                if plan["usage"] is None and os.path.exists(os.path.join(v1, "cpuacct.usage")):  # co-mounted
                    plan.update(usage=os.path.join(v1, "cpuacct.usage"), usage_kind="v1")
                    cpu_time = "cgroup v1 cpuacct"
        if plan["usage"] is None:
            acct = self._make(homes.v1_cpuacct, name)
            if acct is not None:
                plan["join"].append(os.path.join(acct, "cgroup.procs"))
                plan.update(usage=os.path.join(acct, "cpuacct.usage"), usage_kind="v1")
                cpu_time = "cgroup v1 cpuacct"
        if not plan["join"]:
            return None
        plan.update(cpu_time=cpu_time, shares=shares)
        return plan

    def _make(self, home: str | None, name: str) -> str | None:
        if home is None:
            return None
        path = os.path.join(home, name)
        try:
            os.mkdir(path)
        except OSError:
            return None
        self.made.append(path)
        return path

    def close(self) -> None:
        """Remove the cgroups (the servers have exited); killed leftovers may take a moment to go."""
        for path in reversed(self.made):
            for _ in range(100):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    with contextlib.suppress(OSError):
                        Path(path, "cgroup.kill").write_text("1")
                    time.sleep(0.02)
        self.made.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _has_line(path: str, key: str) -> bool:
    try:
        return any(line.split()[:1] == [key] for line in Path(path).read_text().splitlines())
    except OSError:
        return False


def _program_file(source: str) -> int:
    """A descriptor of an anonymous file holding the program, read from the start by the runner."""
    data = source.encode("utf-8", "surrogateescape")
    try:
        fd = os.memfd_create("program", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _Server:
    """One warm interpreter (sandbox_boot.py) for one slot: runs that slot's programs one at a time."""

    def __init__(self, mode: str, slot: int, python: str, cgroup: dict | None = None):
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
            "cgroup": cgroup,
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
        work = os.path.join(self.dir, f"work-{self.count}")
        if self.mode != "namespaces":  # with namespaces, each run mounts a fresh tmpfs instead
            os.mkdir(work, 0o700)
        status: dict = {}
        out, err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
        start = time.monotonic()
        backstop_hit = False
        pipes = [os.pipe() for _ in range(3)]
        for r, _ in pipes[:2]:  # a larger pipe: an output flood costs its writer CPU, not us wake-ups
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            request = {"work": work, "limits": asdict(limits), "wall_s": limits.wall_s}
            program = _program_file(source)
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [w for _, w in pipes] + [program])
            except OSError as e:
                raise CodeinstructError(f"the sandbox server is gone ({e.strerror}){self._last_log_line()}") from None
            finally:
                for _, w in pipes:
                    os.close(w)
                os.close(program)
            status_buf = bytearray()
            readers = {pipes[0][0]: out.feed, pipes[1][0]: err.feed, pipes[2][0]: status_buf.extend}
            backstop = start + limits.wall_s + BACKSTOP_S
            with selectors.DefaultSelector() as sel:
                for fd in readers:
                    sel.register(fd, selectors.EVENT_READ)
                while sel.get_map():
                    if time.monotonic() > backstop:
                        backstop_hit = True
                        break
                    for key, _ in sel.select(timeout=0.5):
                        data = os.read(key.fd, PIPE_BYTES)
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
            if self.mode != "namespaces":
                shutil.rmtree(work, ignore_errors=True)
        if not status:
            raise CodeinstructError(f"the sandbox server stopped without a report{self._last_log_line()}")
        if "runner_error" in status:
            raise CodeinstructError(f"the sandbox could not run a program: {status['runner_error']}")
        sig = status.get("signal")
        timeout_by = None
        if "setup_error" in status:
            timed_out = False
        elif backstop_hit or ("exit_code" not in status and sig is None):  # we had to kill it
            timed_out, sig, timeout_by = True, "SIGKILL", "wall"
        else:
            timed_out = bool(status.get("timed_out")) or sig == "SIGXCPU"
            if timed_out:
                timeout_by = status.get("timeout_by") or "cpu"
        result = SandboxResult(
            exit_code=status.get("exit_code"),
            signal=sig,
            timed_out=timed_out,
            stdout=out.text(),
            stderr=err.text(),
            truncated=bool(out.tail or err.tail),
            seconds=time.monotonic() - start,
            isolation=self.mode,
            timeout_by=timeout_by,
            cpu_seconds=status.get("cpu_s"),
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
    rerun_wall_timeouts: bool = True,
) -> list[SandboxResult]:
    """Run many programs, at most `workers` at a time; results in input order.

    The default is two per CPU: part of a short program's time is spent waiting on process and
    namespace creation and teardown, not computing.

    Each worker slot has its own warm interpreter, cgroup (where this process may make them) and,
    when the evaluator is root, its own uid. A program that the wall-clock backstop stopped before
    it used its CPU budget, while other programs ran beside it, is run again alone once all the
    others are done (`rerun_wall_timeouts`); the second result is the one kept (`reran`), and if
    it ran out of wall time again its `timeout_by` is "wall-rerun". `on_result(index, result)` is
    called from the calling thread as each one's final result is known.
    """
    python = python or default_python()
    iso = isolation or probe_isolation(python=python)
    workers = max(1, min(workers or 2 * (os.cpu_count() or 1), len(sources)))
    results: list[SandboxResult | None] = [None] * len(sources)
    if not sources:
        return []
    servers: queue.SimpleQueue[_Server] = queue.SimpleQueue()
    started: list[_Server] = []
    rerun: list[int] = []

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

    def record(index: int, result: SandboxResult) -> None:
        results[index] = result
        if on_result is not None:
            on_result(index, result)

    cgroups = _SlotCgroups() if iso.cgroups else None
    try:
        for slot in range(workers):
            started.append(_Server(iso.level, slot, python, cgroups.plan(slot) if cgroups else None))
            servers.put(started[-1])
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(one, i, s) for i, s in enumerate(sources)]
            try:
                for future in as_completed(futures):
                    index, result = future.result()
                    if result.timeout_by == "wall" and rerun_wall_timeouts and workers > 1:
                        rerun.append(index)
                    else:
                        record(index, result)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        for index in sorted(rerun):  # alone: every other slot is idle now
            _, result = one(index, sources[index])
            by = "wall-rerun" if result.timeout_by == "wall" else result.timeout_by
            record(index, replace(result, timeout_by=by, reran=True))
    finally:
        for server in started:
            server.close()
        if cgroups is not None:
            cgroups.close()
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
        cpu_time=seen.get("cpu_time", PROCESS_CPU_TIME),
        cpu_shares=seen.get("cpu_shares", "none"),
    )


def _probe_run(mode: str, python: str) -> tuple[dict | None, str]:
    host_dir = tempfile.mkdtemp(prefix="codeinstruct-probe-")
    os.chmod(host_dir, 0o777)  # writable for any uid: only isolation may stop the probe writing here
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            source = _PROBE.replace("PORT", str(listener.getsockname()[1])).replace("HOST_DIR", repr(host_dir))
            with _SlotCgroups() as cgroups:
                plan = cgroups.plan(0)
                with _Server(mode, 0, python, plan) as server:
                    status, result = server.run(source, SandboxLimits(timeout_s=10))
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
    if "setup_error" in status:
        return None, status["setup_error"]
    try:
        seen = json.loads(result.stdout)
    except ValueError:
        seen = None
    if seen is not None:
        if plan is not None and status.get("cpu_time") == "cgroup" and "cgroup_error" not in status:
            seen.update(cpu_time=plan["cpu_time"], cpu_shares=plan["shares"])
        return seen, ""
    else:
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.exit_code}, signal {result.signal}"])[-1]
        return None, reason
