"""Lock files: atomic creation, holder inside, stale locks of dead processes taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from wsi_stnuc.inference.lock import LockHeld, acquire, is_stale, locked, release


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)  # reaped by run(): no such process any more


def test_lock_holds_its_holder_and_refuses_a_second_taker(tmp_path):
    path = tmp_path / "x.lock"
    with locked(path) as record:
        held = json.loads(path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["token"] == record["token"]
        with pytest.raises(LockHeld, match=f"held by pid {os.getpid()}") as err:
            acquire(path)
        assert str(path) in str(err.value)
    assert not path.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    path = tmp_path / "x.lock"
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "token": "old"}
    path.write_text(json.dumps(stale))
    assert is_stale(stale)
    record = acquire(path)
    assert json.loads(path.read_text())["token"] == record["token"]
    assert "taking over" in caplog.text
    assert not list(tmp_path.glob("*.takeover"))
    release(path, record)
    assert not path.exists()


def test_lock_of_another_host_or_live_process_is_respected(tmp_path):
    path = tmp_path / "x.lock"
    other = {"pid": 1, "host": "another-machine", "token": "theirs"}
    path.write_text(json.dumps(other))
    assert not is_stale(other)
    with pytest.raises(LockHeld, match="another-machine"):
        acquire(path, wait=0.1)
    # releasing with a record that is not the holder's leaves the lock alone
    release(path, {"token": "mine"})
    assert json.loads(path.read_text())["token"] == "theirs"


def test_reused_pid_counts_as_gone(tmp_path):
    me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": "-1", "token": "t"}
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("no /proc")
    assert is_stale(me)  # our pid, but a process that started at another time
