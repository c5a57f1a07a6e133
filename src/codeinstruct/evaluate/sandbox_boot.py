"""The sandbox's fork server: sets up isolation for each program, runs it, reports how it ended.

codeinstruct.evaluate.sandbox starts one of these per parallel slot, as
`python -I -S sandbox_boot.py CONFIG_JSON`, with an empty environment, stdin from /dev/null, in a
new session. It imports only the standard library, nothing from codeinstruct, and never runs
untrusted code itself. For each request (a JSON message on a Unix socket, carrying the write ends
of three pipes: stdout, stderr, status) it forks a runner, which starts a new session and:

  mode "namespaces" (where the kernel lets us):
    1. unshares mount, PID, IPC and UTS namespaces (the server itself entered a network namespace,
       and a user namespace when not root, once for all the runs of its slot);
    2. builds a new root on a small tmpfs: read-only bind mounts of the system directories and of
       the Python installation only, /dev/{null,zero,random,urandom}, and a size-capped tmpfs
       at /tmp (the program's working directory, owned by the program's uid), into which the
       program is copied; the host's other files (home directories, the project, other runs)
       are not there at all;
    3. forks the program's process: PID 1 of the new PID namespace, so when it ends the kernel
       kills every process it left behind. It chroots into the new root, sets the resource
       limits, drops to an unprivileged uid (root: the slot's uid; otherwise the user's own uid,
       mapped in the user namespace, whose capabilities end at execve), sets no_new_privs and
       execs `python -I -S -B /tmp/program.py` with an empty environment.
    The new network namespace has only a loopback device, and it is down: no connection works.

  mode "rlimits" (the fallback): forks the program's process, which gets its own process group,
    the resource limits and no_new_privs, and execs the program in a private working directory.

The runner enforces the wall-clock timeout (SIGKILL to the program, and to its whole PID
namespace or process group with it) and writes JSON lines to the status pipe: first the runner's
and the program's pids, then how the program ended. Starting Python once per slot instead of once
per program is what makes the sandbox cheap: a program costs a fork, the namespaces and one
interpreter start-up.
"""

import contextlib
import ctypes
import json
import math
import os
import resource
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
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

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


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


def build_root(cfg: dict, request: dict, uid: int, gid: int) -> None:
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
    size = request["limits"]["tmpfs_mb"]
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=700,uid={uid},gid={gid}")
    with open(request["program"], "rb") as src, open(root + "/tmp/program.py", "wb") as dst:
        dst.write(src.read())
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def set_limits(limits: dict) -> None:
    mib = 1024 * 1024
    cpu = math.ceil(limits["timeout_s"]) + 1
    for which, value in (
        (resource.RLIMIT_AS, limits["memory_mb"] * mib),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_NPROC, limits["processes"]),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))


def program_process(cfg: dict, request: dict, uid: int, gid: int, namespaces: bool) -> None:
    """Runs in the program's process until execve; never returns."""
    try:
        if namespaces:
            os.chroot(cfg["root"])
            os.chdir("/tmp")
            program = "/tmp/program.py"
        else:
            os.setpgid(0, 0)
            os.chdir(request["work"])
            program = request["program"]
        set_limits(request["limits"])
        if os.geteuid() == 0 and uid != 0:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        os.execve(cfg["python"], [cfg["python"], "-I", "-S", "-B", program], {})
    except BaseException as e:  # noqa: BLE001 - report anything, then leave without cleanup
        os.write(2, f"sandbox: cannot start the program: {e}\n".encode())
    os._exit(127)


def runner(cfg: dict, request: dict, status) -> None:
    """Runs in a child of the server: one program from set-up to its end."""
    os.setsid()
    namespaces = cfg["mode"] == "namespaces"
    as_root = os.geteuid() == 0
    uid, gid = (cfg["uid"], cfg["uid"]) if as_root else (os.getuid(), os.getgid())
    if namespaces:
        try:
            if cfg.get("setup_error"):
                raise SetupError(cfg["setup_error"])
            check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
            build_root(cfg, request, uid, gid)
        except (SetupError, OSError) as e:
            status.write(json.dumps({"setup_error": str(e)}) + "\n")
            return
    pid = os.fork()
    if pid == 0:
        program_process(cfg, request, uid, gid, namespaces)
    if not namespaces:
        try:
            os.setpgid(pid, pid)  # also here, so that a timeout can never miss it
        except OSError:
            pass
    status.write(json.dumps({"runner": os.getpid(), "pid": pid}) + "\n")
    # Only the program writes to the output pipes now, so they close when it ends; errors from here
    # on go to the status pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)

    timed_out = False

    def kill_all() -> None:
        # Namespaces: killing PID 1 kills its namespace. Otherwise the program's process group.
        try:
            os.kill(pid, signal.SIGKILL) if namespaces else os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def on_timer(signum, frame):
        nonlocal timed_out
        timed_out = True
        kill_all()

    signal.signal(signal.SIGALRM, on_timer)
    signal.setitimer(signal.ITIMER_REAL, request["limits"]["timeout_s"])
    _, wait_status = os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not namespaces:
        kill_all()  # what the program left running in its process group
    end = {"timed_out": timed_out}
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            end["signal"] = signal.Signals(number).name
        except ValueError:
            end["signal"] = f"signal {number}"
    else:
        end["exit_code"] = os.WEXITSTATUS(wait_status)
    status.write(json.dumps(end) + "\n")
    # Closing here lets the evaluator go on while the kernel tears the namespaces down at our exit.
    status.close()


def enter_slot_namespaces() -> str | None:
    """The server's own namespaces, which every run of this slot shares: a network namespace (no
    process of an earlier run is left to hold a socket in it, and making one per run costs the
    kernel more than the rest of the set-up) and, when not root, the user namespace."""
    try:
        if os.geteuid() == 0:
            check(libc.unshare(CLONE_NEWNET), "unshare")
        else:
            uid, gid = os.getuid(), os.getgid()
            check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare")
            write_file("/proc/self/setgroups", "deny")
            write_file("/proc/self/uid_map", f"{uid} {uid} 1")
            write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    except (SetupError, OSError) as e:
        return str(e)
    return None


def main() -> None:
    cfg = json.loads(sys.argv[1])
    if cfg["mode"] == "namespaces":
        cfg["setup_error"] = enter_slot_namespaces()
    requests = socket.socket(fileno=cfg["socket_fd"])
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(requests, 1 << 16, 3)
        except OSError:
            break
        if not message:  # the evaluator closed its end
            break
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                requests.close()
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                os.close(fds[0])
                os.close(fds[1])
                os.set_inheritable(fds[2], False)  # the program must not hold (or write) the status pipe
                status = os.fdopen(fds[2], "w", buffering=1)
                runner(cfg, request, status)
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
