"""The sandbox contains hostile programs, and says which isolation was in force."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import pytest

from codeinstruct.evaluate.sandbox import (
    SandboxLimits,
    probe_isolation,
    run_program,
    run_programs,
)

LIMITS = SandboxLimits(timeout_s=1.5, memory_mb=512, processes=16, output_bytes=4096)


@pytest.fixture(scope="module")
def isolation():
    return probe_isolation()


def _processes_with(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(cmdline)
    return found


def test_probe_reports_what_it_observed(isolation):
    assert isolation.level in ("namespaces", "rlimits")
    assert isolation.describe().startswith(isolation.level)
    if isolation.level == "namespaces":
        assert isolation.private_filesystem and isolation.network_cut and isolation.own_pid_namespace
    result = run_program("print('hi')", LIMITS, isolation=isolation)
    assert result.isolation == isolation.level
    assert (result.exit_code, result.stdout, result.timed_out) == (0, "hi\n", False)


def test_limits_are_in_force_inside(isolation):
    code = (
        "import json, os, resource\n"
        "print(json.dumps({'nproc': resource.getrlimit(resource.RLIMIT_NPROC), "
        "'as': resource.getrlimit(resource.RLIMIT_AS),\n"
        "  'fsize': resource.getrlimit(resource.RLIMIT_FSIZE), 'nofile': resource.getrlimit(resource.RLIMIT_NOFILE),\n"
        "  'cpu': resource.getrlimit(resource.RLIMIT_CPU), 'uid': os.getuid(), 'cwd': os.getcwd(), "
        "'stdin': os.read(0, 10).decode()}))"
    )
    seen = json.loads(run_program(code, LIMITS, isolation=isolation).stdout)
    assert seen["nproc"] == [16, 16] and seen["as"] == [512 << 20, 512 << 20]
    assert seen["fsize"] == [16 << 20, 16 << 20] and seen["nofile"] == [64, 64] and seen["cpu"] == [3, 3]
    assert seen["stdin"] == ""  # /dev/null
    assert (seen["uid"] != 0) == isolation.unprivileged


def test_the_working_directory_is_private_and_removed_afterwards(isolation):
    code = "import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())"
    first = run_program(code, LIMITS, isolation=isolation).stdout.strip()
    assert "left.txt" not in os.listdir("/tmp")
    if isolation.level == "rlimits":  # a host directory: gone after the run
        assert not Path(first).exists()
    listing = run_program("import os\nprint(os.listdir('.'))", LIMITS, isolation=isolation).stdout
    assert "left.txt" not in listing


def test_an_infinite_loop_times_out(isolation):
    result = run_program("while True:\n    pass", LIMITS, isolation=isolation)
    assert result.timed_out and result.exit_code is None


def test_a_fork_bomb_is_contained(isolation):
    # The process-count limit must hold before the bomb goes off: it holds for an unprivileged uid.
    if not isolation.unprivileged:
        pytest.skip("programs run as root here: RLIMIT_NPROC would not hold, so the fork bomb is not run")
    probe = run_program(
        "import os, resource\nprint(os.getuid(), resource.getrlimit(resource.RLIMIT_NPROC)[0])",
        LIMITS,
        isolation=isolation,
    )
    uid, nproc = map(int, probe.stdout.split())
    assert uid != 0 and nproc == LIMITS.processes
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    bomb_result, after = run_programs([bomb, "print('still fine')"], LIMITS, workers=2, isolation=isolation)
    assert bomb_result.timed_out
    assert after.stdout == "still fine\n"  # the other slot could start its program meanwhile


def test_a_memory_bomb_gets_a_memory_error(isolation):
    limits = SandboxLimits(timeout_s=10, memory_mb=256)
    result = run_program("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))", limits, isolation=isolation)
    assert not result.timed_out and result.exit_code == 1
    assert result.stderr.rstrip().endswith("MemoryError")


def test_network_connections_fail_where_the_network_is_cut(isolation):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('connected')\n"
            "except OSError as e:\n    print('refused', e.errno)"
        )
        result = run_program(code, LIMITS, isolation=isolation)
    assert result.stdout.startswith("refused" if isolation.network_cut else "connected")


def test_writes_outside_the_working_directory_do_not_reach_the_host(isolation, tmp_path):
    target = tmp_path / f"escaped-{uuid.uuid4().hex}"
    tmp_path.chmod(0o777)
    # Where the host's filesystem is the program's (rlimits), only the harmless target is tried.
    paths = [str(target), "/usr/escaped", "/escaped"] if isolation.private_filesystem else [str(target)]
    code = (
        "import os\n"
        f"for path in {paths!r}:\n"
        "    try:\n        open(path, 'w').write('x')\n        print('wrote', path)\n"
        "    except OSError as e:\n        print('blocked', path, type(e).__name__)"
    )
    result = run_program(code, LIMITS, isolation=isolation)
    if isolation.private_filesystem:
        assert result.stdout.count("blocked") == 3 and "wrote" not in result.stdout
        assert not target.exists() and not Path("/usr/escaped").exists() and not Path("/escaped").exists()
    else:
        assert target.exists()  # rlimits only: the host's files are the program's


@pytest.mark.parametrize("escape", ["", "os.setsid()"])
def test_a_child_that_outlives_the_program_is_killed(isolation, escape):
    if escape and isolation.level != "namespaces":
        pytest.skip("without a PID namespace a child in its own session can escape the group kill")
    marker = f"codeinstruct-outlive-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import os, time\\n{escape}\\ntime.sleep(60)  # {marker}'],"
        " start_new_session=False)\n"
        "print('parent leaves')"
    )
    result = run_program(code, LIMITS, isolation=isolation)
    assert result.stdout == "parent leaves\n" and not result.timed_out
    assert _processes_with(marker) == []


def test_a_stdout_flood_is_capped_and_the_run_goes_on(isolation):
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"
    finite = "import sys\nsys.stdout.write('a' * 100000 + 'END')\nprint('bye', file=sys.stderr)"
    flooded, bounded, after = run_programs([flood, finite, "print(1)"], LIMITS, workers=2, isolation=isolation)
    assert flooded.timed_out and flooded.truncated and len(flooded.stdout) < 2 * LIMITS.output_bytes + 200
    assert bounded.exit_code == 0 and bounded.truncated
    assert bounded.stdout.startswith("a" * LIMITS.output_bytes) and bounded.stdout.endswith("END")
    assert "bytes not kept" in bounded.stdout and bounded.stderr == "bye\n"
    assert after.stdout == "1\n"


def test_the_environment_is_empty(isolation, monkeypatch):
    monkeypatch.setenv("CODEINSTRUCT_TEST_SECRET", "hunter2")
    result = run_program("import os, json\nprint(json.dumps(dict(os.environ)))", LIMITS, isolation=isolation)
    seen = json.loads(result.stdout)
    assert "CODEINSTRUCT_TEST_SECRET" not in seen and "hunter2" not in result.stdout
    assert set(seen) <= {"LC_CTYPE"}  # Python's own C-locale coercion, nothing from the parent


def test_other_processes_cannot_be_signalled(isolation):
    if not isolation.own_pid_namespace:
        pytest.skip("needs a PID namespace")
    result = run_program("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('alone')", LIMITS, isolation=isolation)
    assert "ProcessLookupError" in result.stderr  # there is no one else to kill
    assert os.getpid()  # and we are still here


def test_many_programs_run_in_parallel_and_keep_their_order(isolation):
    sources = [f"print({i} * {i})" for i in range(12)]
    seen = []
    results = run_programs(sources, LIMITS, workers=2, isolation=isolation, on_result=lambda i, r: seen.append(i))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(12)]
    assert sorted(seen) == list(range(12))


def test_the_rlimits_fallback_runs_programs_too():
    fallback = probe_isolation("rlimits")
    assert fallback.level == "rlimits" and not fallback.network_cut and not fallback.private_filesystem
    result = run_program("import os\nprint(len(os.environ) <= 1)", LIMITS, isolation=fallback)
    assert (result.stdout, result.isolation) == ("True\n", "rlimits")
    assert run_program("while True: pass", LIMITS, isolation=fallback).timed_out


def test_a_spinning_loop_ends_by_its_cpu_budget(isolation):
    result = run_program("while True:\n    pass", LIMITS, isolation=isolation)
    assert result.timed_out and result.timeout_by == "cpu"
    assert LIMITS.timeout_s <= result.cpu_seconds < LIMITS.timeout_s + 1.5


def test_cpu_of_a_child_in_its_own_session_counts(isolation):
    # The parent only sleeps; the CPU is spent by a child that left the process group.
    if not isolation.cgroups and isolation.level != "namespaces":
        pytest.skip("without a cgroup or a PID namespace a child in its own session is not tracked")
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    while True:\n        pass\ntime.sleep(1000)"
    limits = SandboxLimits(timeout_s=1.0, wall_timeout_s=60, processes=16)
    result = run_program(code, limits, isolation=isolation)
    assert result.timed_out
    if isolation.cgroups:  # the cgroup counts the child's CPU: its budget, not the wall clock, ends the run
        assert result.timeout_by == "cpu" and result.seconds < 30
    else:  # RLIMIT_CPU stops the child; the sleeping parent is left to the wall clock
        assert result.timeout_by == "wall"


def test_a_program_that_sleeps_forever_ends_by_the_wall_clock(isolation):
    limits = SandboxLimits(timeout_s=0.5, wall_timeout_s=1.5)
    alone = run_program("import time\ntime.sleep(1000)", limits, isolation=isolation)
    assert alone.timed_out and alone.timeout_by == "wall" and not alone.reran
    assert alone.cpu_seconds < 0.5 and 1.5 <= alone.seconds < 10
    # Beside other programs, a wall-clock timeout is run again alone before it is recorded.
    seen = []
    sleeper, other = run_programs(
        ["import time\ntime.sleep(1000)", "print('ok')"],
        limits,
        workers=2,
        isolation=isolation,
        on_result=lambda i, r: seen.append((i, r.timeout_by)),
    )
    assert sleeper.timed_out and sleeper.reran and sleeper.timeout_by == "wall-rerun"
    assert other.stdout == "ok\n" and not other.reran and other.timeout_by is None
    assert sorted(seen) == [(0, "wall-rerun"), (1, None)]  # reported once, with the final result


def test_each_program_starts_from_a_fresh_interpreter(isolation):
    change = (
        "import builtins, math, sys\n"
        "math.pi = 3\nbuiltins.len = lambda x: -1\nsys.modules['planted'] = math\n"
        "open('left.txt', 'w').write('x')\nprint('changed', flush=True)"
    )
    look = (
        "import math, os, sys\n"
        "print(math.pi, len('ab'), 'planted' in sys.modules, os.listdir('.'), __name__, sys.argv[0].endswith('.py'))"
    )
    first, second = run_programs([change, look], LIMITS, workers=1, isolation=isolation)
    assert first.stdout == "changed\n"
    assert second.stdout == "3.141592653589793 2 False ['program.py'] __main__ True\n"


def test_the_program_holds_no_privileges(isolation):
    if not isolation.unprivileged:
        pytest.skip("programs run as root here (rlimits as root)")
    code = (
        "import os\n"
        "for name, call in [('setuid', lambda: os.setuid(0)), ('chroot', lambda: os.chroot('/')),\n"
        "                   ('nice', lambda: os.nice(-5))]:\n"
        "    try:\n        call()\n        print(name, 'allowed')\n"
        "    except OSError as e:\n        print(name, 'denied', type(e).__name__)"
    )
    result = run_program(code, LIMITS, isolation=isolation)
    # PermissionError, or EINVAL for setuid(0) in a user namespace where uid 0 is not mapped at all
    assert result.stdout.count("denied") == 3 and "allowed" not in result.stdout, result.stdout + result.stderr


def test_uncaught_errors_and_exits_look_like_a_plain_interpreter(isolation):
    raised, syntax, exited, message = run_programs(
        ["def f():\n    1 / 0\nf()", "def f(:\n", "import sys\nsys.exit(3)", "raise SystemExit('bye')"],
        LIMITS,
        workers=2,
        isolation=isolation,
    )
    assert raised.exit_code == 1 and raised.stderr.startswith("Traceback (most recent call last):\n  File ")
    assert "sandbox_boot" not in raised.stderr and raised.stderr.rstrip().endswith(
        "ZeroDivisionError: division by zero"
    )
    assert syntax.exit_code == 1 and syntax.stderr.rstrip().endswith("SyntaxError: invalid syntax")
    assert exited.exit_code == 3 and message.exit_code == 1 and message.stderr == "bye\n"
