"""The sandbox's warm interpreter: sets up a slot's isolation once, then forks a fresh child per program.

codeinstruct.evaluate.sandbox starts one of these per parallel slot, as
`python -I -S sandbox_boot.py CONFIG_JSON`, with an empty environment, stdin from /dev/null, in a
new session. It imports only the standard library, nothing from codeinstruct, and never runs
untrusted code itself: every program runs in a forked child, which gets its own copy of this
interpreter (already started, with a few common standard modules imported) and leaves nothing
behind in it.

Once per slot, at start (mode "namespaces", where the kernel lets us):
    1. opens the slot's cgroup files (to put each program in the slot's cgroup, read its CPU time
       and kill it) while they are still visible;
    2. enters a network namespace (only a loopback device, and it is down: no connection works)
       and, when not root, a user namespace that maps the user's own uid;
    3. unshares mount and UTS namespaces and builds a new root on a small tmpfs: read-only bind
       mounts of the system directories and of the Python installation only, and
       /dev/{null,zero,random,urandom}; the host's other files (home directories, the project,
       other runs) are not there at all. It chroots into it and stays there.

For each request (a JSON message on a Unix socket, carrying four file descriptors: the write ends
of the stdout, stderr and status pipes, and the program's source) it forks a runner, which starts
a new session and:
    1. (namespaces) unshares mount, PID and IPC namespaces and mounts a fresh size-capped tmpfs
       at /tmp, owned by the program's uid: the program's working directory, into which the
       program is written; (rlimits) uses the private directory the evaluator made;
    2. forks the program's process (namespaces: PID 1 of the new PID namespace, so when it ends
       the kernel kills every process it left behind), puts it into the slot's cgroups, notes
       the cgroup's CPU time, and lets it go;
    3. the program's process closes every inherited descriptor but stdin/stdout/stderr, sets
       the resource limits, drops to an unprivileged uid (root: the slot's uid; otherwise the
       user's own uid in the user namespace), drops every capability, sets no_new_privs and
       the parent-death signal, and runs the program as `__main__` in this fresh copy of the
       interpreter, with the empty environment the server started with.

The runner decides timeouts by CPU time: the CPU seconds of the program and of every process it
started (the slot's cgroup, where there is one; otherwise the program's own process, with
RLIMIT_CPU on each process), checked as often as the budget could run out, so the machine's
load does not change the outcome. The wall clock is only a backstop, several times the budget,
for programs that sleep or are starved. On a timeout it SIGKILLs the program, and its whole PID
namespace (or process group and cgroup) with it, and it writes JSON lines to the status pipe:
first the runner's and the program's pids, then how the program ended, how a timeout was
decided ("cpu" or "wall") and the CPU seconds used.
"""

import contextlib
import ctypes
import json
import math
import os
import resource
import select
import signal
import socket
import sys
import time
import types

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# statvfs f_flag bits -> mount flags: a bind remount inside a user namespace must keep the
# flags the kernel locked on the original mount, or it fails with EPERM.
LOCKED_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
DEVICES = ("null", "zero", "random", "urandom")
# Imported once here so that each program finds them loaded (what HumanEval-style programs and
# the scoring harness use); a program's changes to them stay in its own forked copy.
PRELOAD = (
    "typing",
    "math",
    "re",
    "collections",
    "itertools",
    "functools",
    "hashlib",
    "string",
    "heapq",
    "bisect",
    "traceback",
    "threading",
    "atexit",
)
MIN_CHECK_S = 0.01  # the shortest wait between two looks at the CPU time

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None) -> None:
    def enc(s):
        return None if s is None else s.encode()

    check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def bind_readonly(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND)
    locked = os.statvfs(source).f_flag
    extra = sum(ms for st, ms in LOCKED_FLAGS if locked & st)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | extra)


def write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def build_root(cfg: dict) -> None:
    """The slot's new root, read-only, with an empty /tmp on which each run mounts its own tmpfs."""
    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here propagates to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in cfg["binds"]:
        target = root + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(path):  # /bin -> usr/bin on merged-/usr systems: same link, same target
            os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            open(target, "w").close()
        bind_readonly(path, target)
    os.makedirs(root + "/dev", exist_ok=True)
    for name in DEVICES:
        target = f"{root}/dev/{name}"
        open(target, "w").close()
        mount(f"/dev/{name}", target, None, MS_BIND)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC)
    os.makedirs(root + "/tmp")
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def enter_slot_namespaces() -> None:
    """The namespaces every run of this slot shares: network (no process of an earlier run is left
    to hold a socket in it, and making one per run costs the kernel more than the rest of the
    set-up), the user namespace when not root, then mount and UTS for the slot's new root."""
    if os.geteuid() == 0:
        check(libc.unshare(CLONE_NEWNET), "unshare")
    else:
        uid, gid = os.getuid(), os.getgid()
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare")
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")


class Slot:
    """What the server keeps for all its runs: the config, and descriptors opened before chroot."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.namespaces = cfg["mode"] == "namespaces"
        as_root = os.geteuid() == 0
        self.uid, self.gid = (cfg["uid"], cfg["uid"]) if as_root else (os.getuid(), os.getgid())
        self.cpus = max(1, len(os.sched_getaffinity(0)))
        self.clock_ticks = os.sysconf("SC_CLK_TCK")
        self.proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
        cgroup = cfg.get("cgroup") or {}
        self.joins = [os.open(path, os.O_WRONLY) for path in cgroup.get("join", ())]
        self.usage = os.open(cgroup["usage"], os.O_RDONLY) if cgroup.get("usage") else None
        self.usage_kind = cgroup.get("usage_kind")
        self.kill = os.open(cgroup["kill"], os.O_WRONLY) if cgroup.get("kill") else None
        self.setup_error = None
        if self.namespaces:
            try:
                enter_slot_namespaces()
                build_root(cfg)
                os.chroot(cfg["root"])
                os.chdir("/")
            except (SetupError, OSError) as e:
                self.setup_error = str(e)

    def cgroup_seconds(self) -> float | None:
        """CPU seconds the slot's cgroup has used so far, or None without one."""
        if self.usage is None:
            return None
        text = os.pread(self.usage, 4096, 0).decode()
        if self.usage_kind == "v2":  # cpu.stat: "usage_usec N" first
            return int(text.split()[1]) / 1e6
        return int(text.split()[0]) / 1e9  # cpuacct.usage, nanoseconds

    def process_seconds(self, pid: int) -> float:
        """CPU seconds of one process and of the children it has waited for (/proc/PID/stat)."""
        try:
            fd = os.open(f"{pid}/stat", os.O_RDONLY, dir_fd=self.proc)
        except OSError:
            return 0.0
        try:
            fields = os.read(fd, 4096).decode().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        finally:
            os.close(fd)
        return sum(int(f) for f in fields[11:15]) / self.clock_ticks  # utime stime cutime cstime


def set_limits(limits: dict) -> None:
    mib = 1024 * 1024
    cpu = math.ceil(limits["timeout_s"]) + 1  # per process; the budget of them all is the runner's
    for which, value in (
        (resource.RLIMIT_AS, limits["memory_mb"] * mib),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_NPROC, limits["processes"]),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))


def drop_privileges(uid: int, gid: int) -> None:
    if os.geteuid() == 0 and uid != 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    # No execve follows, so capabilities a user namespace gave us would stay: drop them all.
    data = (CapData * 2)()
    check(libc.capset(ctypes.byref(CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")


def program_process(slot: Slot, limits: dict, cwd: str, path: str, source: str, go: int) -> None:
    """Runs in the program's process; never returns."""
    try:
        os.read(go, 1)  # the runner has put us into the slot's cgroups
        if not slot.namespaces:
            os.setpgid(0, 0)
        os.chdir(cwd)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[1])  # socket, pipes, cgroup files
        set_limits(limits)
        drop_privileges(slot.uid, slot.gid)
    except BaseException as e:  # noqa: BLE001 - report anything, then leave without cleanup
        os.write(2, f"sandbox: cannot start the program: {e}\n".encode())
        os._exit(127)
    os._exit(run_as_main(source, path))


def run_as_main(source: str, path: str) -> int:
    """Run a program's source as `python -I -S -B PATH` would; its exit status."""
    import atexit
    import builtins

    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__, main.__cached__ = path, builtins, None
    sys.modules["__main__"] = main
    sys.argv[:] = [path]
    sys.dont_write_bytecode = True
    code = 0
    try:
        try:
            exec(compile(source, path, "exec"), main.__dict__)
        finally:
            threading = sys.modules.get("threading")
            if threading is not None:
                threading._shutdown()  # wait for non-daemon threads, as at interpreter exit
            atexit._run_exitfuncs()
    except SystemExit as e:
        code = exit_status(e)
    except BaseException as e:  # noqa: BLE001 - what the interpreter would print for an uncaught error
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next  # the program's frames only, not this file's
        with contextlib.suppress(BaseException):
            sys.excepthook(type(e), e.with_traceback(tb), tb)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - e.g. a closed pipe, as the interpreter reports it
            code = code or 120
    return code


def exit_status(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    with contextlib.suppress(BaseException):
        sys.stderr.write(f"{e.code}\n")  # what the interpreter writes for sys.exit("message")
    return 1


def runner(slot: Slot, request: dict, program_fd: int, status) -> None:
    """Runs in a child of the server: one program from set-up to its end."""
    os.setsid()
    if slot.setup_error:
        status.write(json.dumps({"setup_error": slot.setup_error}) + "\n")
        return
    with os.fdopen(program_fd, "rb") as f:
        source = f.read().decode("utf-8", "surrogateescape")
    limits = request["limits"]
    if slot.namespaces:
        try:
            check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
            size = limits["tmpfs_mb"]
            options = f"size={size}m,mode=700,uid={slot.uid},gid={slot.gid}"
            mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, options)
        except (SetupError, OSError) as e:
            status.write(json.dumps({"setup_error": str(e)}) + "\n")
            return
        cwd = "/tmp"
    else:
        cwd = request["work"]
    path = cwd + "/program.py"
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(source)
    os.chmod(path, 0o644)
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        program_process(slot, limits, cwd, path, source, go_r)
    os.close(go_r)
    if not slot.namespaces:
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so that a timeout can never miss it
    report = {"runner": os.getpid(), "pid": pid}
    try:
        for fd in slot.joins:
            os.write(fd, str(pid).encode())
        accounting = "cgroup" if slot.usage is not None else "process"
    except OSError as e:
        accounting = "process"
        report["cgroup_error"] = e.strerror
    status.write(json.dumps(report) + "\n")
    # Only the program writes to the output pipes now, so they close when it ends; errors from here
    # on go to the status pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)

    base = slot.cgroup_seconds() if accounting == "cgroup" else 0.0

    def used() -> float:
        if accounting == "cgroup":
            return slot.cgroup_seconds() - base
        return slot.process_seconds(pid)

    def kill_all() -> None:
        # Namespaces: killing PID 1 kills its namespace. Otherwise the process group and the cgroup.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL) if slot.namespaces else os.killpg(pid, signal.SIGKILL)
        if not slot.namespaces and slot.kill is not None and accounting == "cgroup":
            with contextlib.suppress(OSError):
                os.write(slot.kill, b"1")  # children that left the process group too

    budget, wall = float(limits["timeout_s"]), float(request["wall_s"])
    start = time.monotonic()
    os.write(go_w, b"x")
    os.close(go_w)
    timeout_by = wait_for(pid, start + wall, budget, used, slot.cpus)
    if timeout_by:
        kill_all()
    _, wait_status, usage = os.wait4(pid, 0)
    if not slot.namespaces:
        kill_all()  # what the program left running
    seconds = used() if accounting == "cgroup" else usage.ru_utime + usage.ru_stime
    end = {"timed_out": bool(timeout_by), "timeout_by": timeout_by, "cpu_s": round(seconds, 4), "cpu_time": accounting}
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            end["signal"] = signal.Signals(number).name
        except ValueError:
            end["signal"] = f"signal {number}"
        # RLIMIT_CPU on one process: SIGXCPU at the soft limit (SIGKILL past the hard one).
        if not timeout_by and (number == signal.SIGXCPU or (number == signal.SIGKILL and seconds >= budget)):
            end.update(timed_out=True, timeout_by="cpu")
    else:
        end["exit_code"] = os.WEXITSTATUS(wait_status)
    status.write(json.dumps(end) + "\n")
    # Closing here lets the evaluator go on while the kernel tears the namespaces down at our exit.
    status.close()


def wait_for(pid: int, deadline: float, budget: float, used, cpus: int) -> str | None:
    """Wait until the program ends (None), uses its CPU budget ("cpu") or the deadline passes ("wall").

    The CPU time is looked at when the budget could first have run out: the remaining budget
    spread over every CPU, so a short program is never woken for and a spinning one is caught
    within a few milliseconds of its budget.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            spent = used()
            if spent >= budget:
                return "cpu"
            now = time.monotonic()
            if now >= deadline:
                return "wall"
            wait = min(deadline - now, max(MIN_CHECK_S, (budget - spent) / cpus))
            if pidfd is not None:
                if select.select([pidfd], [], [], wait)[0]:
                    return None
            else:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return None  # ended; the caller reaps it
                time.sleep(min(wait, 0.02))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    slot = Slot(cfg)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    requests = socket.socket(fileno=cfg["socket_fd"])
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(requests, 1 << 16, 4)
        except OSError:
            break
        if not message:  # the evaluator closed its end
            break
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            code = 0
            status = None
            try:
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                os.close(fds[0])
                os.close(fds[1])
                status = os.fdopen(fds[2], "w", buffering=1)
                runner(slot, request, fds[3], status)
            except BaseException as e:  # noqa: BLE001
                with contextlib.suppress(BaseException):  # nowhere left to report to
                    status.write(json.dumps({"runner_error": repr(e)}) + "\n")
                code = 1
            os._exit(code)
        for fd in fds:
            os.close(fd)
        reap(block=False)  # earlier runners may still be tearing their namespaces down
    reap(block=True)


def reap(block: bool) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    main()
