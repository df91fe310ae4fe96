"""Run untrusted, model-generated Python in a throw-away child process: defence in depth, not a VM.

The execution filter runs code that a model wrote; most of it is harmless, some of it loops
forever, allocates without bound, deletes files or opens sockets by accident. Each run gets, in
layers that back each other up:

- a fresh interpreter, ``python -I -S``: isolated mode (PYTHON* variables, the user site and the
  script's folder ignored) without site-packages, so the code sees the standard library only;
- an environment with nothing but PATH, LANG, and HOME and TMPDIR pointing at its own folder: the
  parent's secrets (tokens, keys) are not inherited; stdin is /dev/null;
- a new temporary working folder, deleted afterwards; stdout and stderr go to files outside it,
  and only their last few KB come back;
- resource limits (setrlimit): address space (``memory_mb``), CPU seconds (timeout + 1, then
  SIGXCPU), 16 MiB per written file (which also caps the output), 64 open files, no core dumps, no
  new processes or threads (RLIMIT_NPROC 0; note that the kernel does not apply it to root);
- its own session, whose whole process group is killed when the wall-clock timeout expires;
- an empty network namespace (only a loopback that is down) where the kernel allows one: as root,
  or for other users inside a new user namespace (``unshare(2)`` through ctypes: Python 3.11 has
  no ``os.unshare``);
- a Landlock file-system policy where the kernel has Landlock (Linux 5.13+; it binds root too):
  reading only the standard library, the system libraries under /usr, /lib and /lib64, the
  loader cache, /etc/localtime and /dev/{null,urandom}; writing only in its folder (and
  /dev/null); executing nothing; with Landlock ABI 4+ no TCP bind or connect, with ABI 6+ no
  signals to processes outside the sandbox;
- a Python audit hook (PEP 578) that ends the run with status ``blocked`` at the first socket,
  subprocess, exec, fork, kill, ctypes call, rlimit change, sub-interpreter, syslog, file write
  outside its folder, directory opened outside it, or file read outside the readable paths above.

What is not isolated, precisely:

- The kernel is shared: a kernel bug is an escape. CPU, memory bandwidth and disk I/O are shared
  with the host.
- Total disk use inside the run's folder is bounded per file and by the timeout, not in sum.
- The audit hook lives in the same interpreter as the code. It stops accidents and naive
  attempts; a deliberately hostile program can get around it (through frame and closure
  introspection, or crafted bytecode), as CPython's documentation warns. What then still holds are
  the kernel layers: the rlimits, the process group kill, and where the kernel allows them the
  network namespace and Landlock. Without those two (an old kernel, or a container that forbids
  them), such a program runs with the pipeline's user rights: as root, it could read and write
  what root can, and reach the network. Check ``SandboxResult.isolation``; run the pipeline as an
  unprivileged user, or in a container, when that matters.
- A process that escapes the hook and calls setsid() leaves the process group; its CPU time is
  still capped by RLIMIT_CPU (inherited), so it dies after timeout + 2 CPU seconds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["ok", "error", "timeout", "memory", "blocked"]

TAIL_BYTES = 4096  # of stdout and of stderr, returned to the caller
EXIT_BLOCKED = 86  # the audit hook refused an operation and ended the run
EXIT_MEMORY = 87  # the program raised MemoryError (RLIMIT_AS)

# Runs first in the child (standard library only), then executes main.py from the working folder.
# It is trusted code: it sets up every layer of the module docstring before any line of main.py runs.
_BOOTSTRAP = r'''
import ctypes, json, os, resource, sys, traceback, types

CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
PR_SET_NO_NEW_PRIVS = 38
FS_READ_FILE, FS_READ_DIR, FS_WRITE_FILE, FS_EXECUTE = 1 << 2, 1 << 3, 1 << 1, 1 << 0


class RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def isolate_network(libc):
    """An empty network namespace: directly as root, else inside a new user namespace."""
    return any(libc.unshare(flags) == 0 for flags in (CLONE_NEWNET, CLONE_NEWNET | CLONE_NEWUSER))


def landlock(libc, read_paths, write_paths):
    """Kernel-enforced file access (and, with newer ABIs, TCP and signals); the ABI applied, or 0."""
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0
    handled = (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1  # every right this ABI knows
    attr = RulesetAttr(handled, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    size = 8 * (1 if abi < 4 else 2 if abi < 6 else 3)
    ruleset = syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    rules = [(path, FS_READ_FILE | FS_READ_DIR) for path in read_paths]
    rules += [(path, handled & ~FS_EXECUTE) for path in write_paths]
    for path, allowed in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if not os.path.isdir(path):  # a rule on a file may only grant file rights
            allowed &= FS_READ_FILE | FS_WRITE_FILE
        rule = PathBeneathAttr(allowed, fd)
        syscall(SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0))
        os.close(fd)
    applied = libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 and syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) == 0
    os.close(ruleset)
    return abi if applied else 0


def limit_resources(memory_mb, cpu_seconds):
    limits = {
        resource.RLIMIT_AS: memory_mb << 20,
        resource.RLIMIT_CPU: cpu_seconds,
        resource.RLIMIT_FSIZE: 16 << 20,
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NPROC: 0,
    }
    for which, soft in limits.items():
        hard = soft + 1 if which == resource.RLIMIT_CPU else soft  # SIGXCPU first, SIGKILL a second later
        resource.setrlimit(which, (soft, hard))


BLOCKED_EVENTS = (
    "socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.kill",
    "signal.pthread_kill", "ctypes.", "resource.setrlimit", "resource.prlimit", "syslog.",
    "cpython.PyInterpreterState_New",
)
BLOCKED_IMPORTS = {"_posixsubprocess", "_xxsubinterpreters"}  # unaudited fork_exec; hook-free interpreters
# Audit events that change the file system: (index of a path argument, index of its dir_fd or None).
WRITE_EVENTS = {
    "os.mkdir": [(0, 2)], "os.rmdir": [(0, 1)], "os.remove": [(0, 1)], "os.rename": [(0, 2), (1, 3)],
    "os.link": [(0, 2), (1, 3)], "os.symlink": [(1, 2)], "os.chmod": [(0, 2)], "os.chown": [(0, 3)],
    "os.utime": [(0, 3)], "os.truncate": [(0, None)], "os.setxattr": [(0, None)],
    "os.removexattr": [(0, None)], "shutil.rmtree": [(0, 1)],
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def install_audit_hook(read_roots, write_roots, exit_code):
    def resolve(path, dir_fd):
        path = os.fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return os.path.realpath(path)

    def within(path, dir_fd, roots):
        if path is None or isinstance(path, int):  # the working folder, or an fd this hook saw opened
            return True
        real = resolve(path, dir_fd)
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)

    def allowed(event, args):
        if event.startswith(BLOCKED_EVENTS):
            return False
        if event == "import":
            return args[0] not in BLOCKED_IMPORTS
        if event in WRITE_EVENTS:
            return all(within(args[p], None if d is None else args[d], write_roots) for p, d in WRITE_EVENTS[event])
        if event == "open":
            path, _, flags = args
            if within(path, None, write_roots):
                return True
            if flags & WRITE_FLAGS or os.path.isdir(path):  # a directory fd would be a dir_fd base
                return False
            return within(path, None, read_roots)
        if event in ("os.listdir", "os.scandir"):
            return within(args[0], None, read_roots + write_roots)
        return True

    def hook(event, args):
        if not allowed(event, args):
            os.write(2, f"sandbox: blocked {event} {args!r:.300}\n".encode(errors="replace"))
            os._exit(exit_code)

    sys.addaudithook(hook)


def main():
    config = json.loads(sys.argv[1])
    work = os.getcwd()
    with open("main.py", encoding="utf-8") as handle:
        source = handle.read()
    stdlib = [os.path.realpath(p) for p in sys.path if os.path.exists(p)]
    system = [os.path.realpath(p) for p in ("/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime", "/dev/urandom")]
    read_roots = tuple(stdlib + system)
    write_roots = (work, "/dev/null")

    libc = ctypes.CDLL(None, use_errno=True)
    layers = ["network-namespace"] if isolate_network(libc) else []
    abi = landlock(libc, read_roots, write_roots)
    layers += [f"landlock-abi{abi}"] if abi else []
    limit_resources(config["memory_mb"], config["cpu_seconds"])
    install_audit_hook(read_roots, write_roots, config["exit_blocked"])
    os.write(config["report_fd"], json.dumps(layers + ["rlimits", "audit-hook"]).encode())
    os.close(config["report_fd"])

    module = types.ModuleType("__main__")
    module.__file__ = os.path.join(work, "main.py")
    sys.modules["__main__"], sys.argv = module, ["main.py"]
    try:
        exec(compile(source, "main.py", "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as error:  # the traceback from main.py down, without this bootstrap's frame
        traceback.print_exception(type(error), error, error.__traceback__.tb_next)
        raise SystemExit(config["exit_memory"] if isinstance(error, MemoryError) else 1) from None


main()
'''


@dataclass(frozen=True)
class SandboxResult:
    """How one run ended. ``stdout``/``stderr`` are the last TAIL_BYTES of each, decoded leniently."""

    status: Status
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    isolation: tuple[str, ...]  # the layers the child applied, e.g. ("network-namespace", "landlock-abi7", ...)


def run_untrusted(code: str, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run `code` as a fresh program in the sandbox; never raises for anything the code does."""
    started = time.perf_counter()
    config = {
        "memory_mb": memory_mb,
        "cpu_seconds": math.ceil(timeout_s) + 1,
        "exit_blocked": EXIT_BLOCKED,
        "exit_memory": EXIT_MEMORY,
    }
    with tempfile.TemporaryDirectory(prefix="domino-sandbox-") as root:
        work = Path(root, "work")
        work.mkdir()
        (work / "main.py").write_text(code, encoding="utf-8")
        report_read, report_write = os.pipe()
        try:
            with open(Path(root, "stdout"), "wb") as out, open(Path(root, "stderr"), "wb") as err:
                process = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps({**config, "report_fd": report_write})],
                    cwd=work,
                    env=_environment(work),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    pass_fds=(report_write,),
                    start_new_session=True,
                )
            os.close(report_write)
            report_write = None
            timed_out = _wait(process, timeout_s)
            isolation = tuple(json.loads(os.read(report_read, 4096) or b"[]"))
        finally:
            os.close(report_read)
            if report_write is not None:
                os.close(report_write)
        return SandboxResult(
            status=_status(process.returncode, timed_out),
            returncode=process.returncode,
            stdout=_tail(Path(root, "stdout")),
            stderr=_tail(Path(root, "stderr")),
            seconds=round(time.perf_counter() - started, 3),
            isolation=isolation,
        )


def run_many(
    codes: Sequence[str],
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_workers: int = 2,
    on_done: Callable[[SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """`run_untrusted` on each program, `max_workers` at a time; results in input order.

    Threads suffice: each one only waits on its child process. `on_done` (e.g. a progress bar's
    update) is called in the calling thread as each run finishes.
    """
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = [pool.submit(run_untrusted, code, timeout_s, memory_mb) for code in codes]
        if on_done is not None:
            for future in as_completed(futures):
                on_done(future.result())
        return [future.result() for future in futures]


def _environment(work: Path) -> dict[str, str]:
    """Nothing inherited from the parent: its variables may hold tokens and keys."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}


def _wait(process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait up to `timeout_s`; kill the whole process group either way. True if it timed out."""
    try:
        process.wait(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    with contextlib.suppress(ProcessLookupError):  # nothing left in the group
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return timed_out


def _status(returncode: int, timed_out: bool) -> Status:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == EXIT_MEMORY:
        return "memory"
    if returncode == EXIT_BLOCKED:
        return "blocked"
    return "ok" if returncode == 0 else "error"


def _tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")
