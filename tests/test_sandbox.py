"""The sandbox: each layer refuses what it should, and ordinary code still runs and reports its output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from axolotl_domino.sandbox import run_many, run_untrusted

# Finds the audit hook through the garbage collector and swaps its check for one that allows
# everything: what a hostile program could do. The kernel layers must hold without the hook.
DEFEAT_AUDIT_HOOK = """
import gc
for f in gc.get_objects():
    if getattr(f, "__name__", None) == "hook" and getattr(f, "__closure__", None):
        for cell in f.__closure__:
            if callable(cell.cell_contents):
                cell.cell_contents = lambda event, args: True
"""


def test_ordinary_code_runs_and_its_folder_is_removed():
    result = run_untrusted("import os, math\nprint('hello', math.factorial(5))\nprint(os.getcwd())", timeout_s=5)
    assert result.status == "ok" and result.returncode == 0
    greeting, folder = result.stdout.splitlines()
    assert greeting == "hello 120"
    assert not Path(folder).exists() and not Path(folder).parent.exists()
    assert "audit-hook" in result.isolation and "rlimits" in result.isolation


def test_standard_library_and_own_folder_are_usable():
    code = (
        "import json, re, heapq, hashlib, datetime, dataclasses, tempfile, shutil, os\n"
        "@dataclasses.dataclass\nclass P:\n    x: int\n"
        "open('notes.txt', 'w').write(json.dumps({'p': P(3).x}))\n"
        "d = tempfile.mkdtemp(); open(os.path.join(d, 'f'), 'w').close(); shutil.rmtree(d)\n"
        "print(open('notes.txt').read(), hashlib.sha256(b'x').hexdigest()[:6])"
    )
    result = run_untrusted(code, timeout_s=5)
    assert result.status == "ok", result.stderr
    assert result.stdout.strip() == '{"p": 3} 2d7116'


def test_infinite_loop_is_stopped_by_the_time_limit():
    result = run_untrusted("while True:\n    pass", timeout_s=1)
    assert result.status == "timeout" and result.seconds >= 1


def test_a_sleeping_program_is_stopped_by_the_wall_clock():
    """Sleeping uses no CPU, so the CPU-seconds limit never fires: only the wall-clock kill can end it."""
    result = run_untrusted("import time\ntime.sleep(600)\nprint('woke')", timeout_s=1)
    assert result.status == "timeout" and "woke" not in result.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
        "import socket\ns = socket.socket()\ns.bind(('0.0.0.0', 0))\ns.listen()",
        "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)",
    ],
    ids=["connect", "listen", "urlopen"],
)
def test_network_is_refused(code):
    result = run_untrusted(code, timeout_s=5)
    assert result.status in ("blocked", "error"), result
    assert result.status != "ok"


def test_writing_outside_its_folder_fails(tmp_path):
    target, keep = tmp_path / "escaped.txt", tmp_path / "keep.txt"
    keep.write_text("mine")
    for code in (f"open({str(target)!r}, 'w').write('x')", f"import os\nos.remove({str(keep)!r})"):
        result = run_untrusted(code, timeout_s=5)
        assert result.status == "blocked", result
    assert not target.exists()
    assert keep.read_text() == "mine"


def test_parent_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("DOMINO_TEST_SECRET", "s3cr3t-token-value")
    from_env = run_untrusted(
        "import os\nprint(os.environ.get('DOMINO_TEST_SECRET'))\nprint(dict(os.environ))", timeout_s=5
    )
    assert from_env.status == "ok"
    assert from_env.stdout.splitlines()[0] == "None"
    from_proc = run_untrusted("import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())", timeout_s=5)
    assert from_proc.status != "ok"
    for result in (from_env, from_proc):
        assert "s3cr3t-token-value" not in result.stdout + result.stderr


def test_large_allocation_fails_with_memory_status():
    result = run_untrusted("buffer = bytearray(2 * 1024**3)\nprint('allocated')", timeout_s=5, memory_mb=512)
    assert result.status == "memory"
    assert "allocated" not in result.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.system('true')",
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.fork()",
        "import ctypes\nctypes.CDLL(None)",
        "import os\nos.kill(os.getppid(), 0)",
    ],
    ids=["system", "subprocess", "fork", "ctypes", "kill"],
)
def test_processes_and_native_calls_are_blocked(code):
    assert run_untrusted(code, timeout_s=5).status == "blocked"


def test_errors_are_reported_with_their_traceback():
    result = run_untrusted("def f(:\n    pass", timeout_s=5)
    assert result.status == "error" and result.returncode == 1
    assert "SyntaxError" in result.stderr


def test_kernel_layers_hold_when_the_audit_hook_is_defeated(tmp_path):
    probe = run_untrusted("pass", timeout_s=5)
    if not any(layer.startswith("landlock") for layer in probe.isolation):
        pytest.skip(f"no Landlock on this kernel (isolation: {probe.isolation})")
    target = tmp_path / "escaped.txt"
    write = run_untrusted(DEFEAT_AUDIT_HOOK + f"open({str(target)!r}, 'w').write('x')", timeout_s=5)
    read = run_untrusted(DEFEAT_AUDIT_HOOK + "print(open('/etc/passwd').read())", timeout_s=5)
    for result in (write, read):
        assert result.status == "error" and "PermissionError" in result.stderr, result
    assert not target.exists()
    if "network-namespace" in probe.isolation:
        connect = run_untrusted(
            DEFEAT_AUDIT_HOOK + "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", timeout_s=5
        )
        assert connect.status == "error"


def test_run_many_keeps_input_order():
    done = []
    results = run_many([f"print({i})" for i in range(4)], timeout_s=5, max_workers=2, on_done=done.append)
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]
    assert len(done) == 4 and all(r.status == "ok" for r in results)


def test_nothing_is_left_in_the_temp_folder():
    import tempfile

    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("domino-sandbox-")}
    run_many(["print(1)", "while True: pass", "bytearray(2 * 1024**3)"], timeout_s=1, max_workers=2)
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("domino-sandbox-")}
    assert after <= before
