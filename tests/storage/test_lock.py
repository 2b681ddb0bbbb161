"""One run per output folder: refused at once naming the holder; dead holders taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from rayq.errors import OutputError
from rayq.storage import LOCK_NAME, Location, OutputLock, holder_of

ROOT = Path(__file__).resolve().parents[2]

HOLD = """
import sys, time
from rayq.storage import OutputLock
lock = OutputLock(sys.argv[1], command="search").acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder_process(tmp_path):
    """Start another process holding the lock of ``tmp_path/run``; yields (process, folder)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_second_run_is_refused_at_once_naming_the_holder(holder_process):
    proc, out = holder_process
    start = time.perf_counter()
    with pytest.raises(OutputError) as info:
        OutputLock(str(out)).acquire()
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert "in use by another run" in message and f"pid {proc.pid}" in message
    assert f"host {socket.gethostname()}" in message and "started 20" in message and "rayq search" in message
    assert holder_of(str(out)).pid == proc.pid


def test_a_killed_holder_is_taken_over(holder_process):
    proc, out = holder_process
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stale = json.loads((out / LOCK_NAME).read_text())
    assert stale["pid"] == proc.pid  # the dead holder's lock file is still there
    assert holder_of(str(out)) is None
    with OutputLock(str(out), command="search") as lock:
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid() == lock.holder.pid
    assert not (out / LOCK_NAME).exists()


def test_lock_is_exclusive_in_one_process_and_reusable_after_release(tmp_path):
    out = tmp_path / "run"
    with OutputLock(str(out), command="sweep"):
        with pytest.raises(OutputError, match="rayq sweep, host"):
            OutputLock(str(out)).acquire()
        with OutputLock(str(out / "model_a")):  # a search inside a sweep locks its own folder
            pass
    with OutputLock(str(out)):
        pass


def test_lock_on_a_file_is_an_output_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="existing file"):
        OutputLock(str(tmp_path / "f")).acquire()


def _store_lock(store, holder: dict) -> None:
    with store.open_output_stream(f"bucket/run/{LOCK_NAME}") as f:
        f.write(json.dumps(holder).encode())


def test_object_store_lock_is_best_effort_but_names_holders_and_takes_over_dead_ones():
    store = pafs._MockFileSystem()
    run = Location("mock://bucket/run", store, "bucket/run")
    with OutputLock(run, command="search"):
        with pytest.raises(OutputError, match="in use by another run"):
            OutputLock(run).acquire()
    assert store.get_file_info(f"bucket/run/{LOCK_NAME}").type == pafs.FileType.NotFound
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    _store_lock(store, {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "then"})
    with OutputLock(run):  # same host, pid gone: taken over
        pass
    _store_lock(store, {"host": "elsewhere", "pid": 1, "started": "then"})
    with pytest.raises(OutputError, match="host elsewhere.*remove it if that run is gone"):
        OutputLock(run).acquire()
