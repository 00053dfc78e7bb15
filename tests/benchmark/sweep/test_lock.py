"""One driver per run directory (benchmark/sweep/lock.py): a second driver is refused in one line, a dead
driver's lock is taken over, the heartbeat refreshes, a lost lock stops the driver."""

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

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "experiments" / "smoke.yaml"


def test_a_second_driver_meets_the_lock_at_once_and_it_is_released(tmp_path):
    from benchmark.results.run_dir import LOCK_FILE
    from benchmark.sweep.lock import LockHeld, RunLock

    run = tmp_path / "run"
    first = RunLock(run, command="tunevlseg run a.yaml").acquire()
    try:
        with pytest.raises(LockHeld) as e:
            RunLock(run).acquire()
        msg = str(e.value)
        assert "\n" not in msg
        assert f"pid {os.getpid()} on {socket.gethostname()}" in msg and "since " in msg
        assert "tunevlseg run a.yaml" in msg and "taken over automatically" in msg and str(run / LOCK_FILE) in msg
    finally:
        first.release()
    assert not (run / LOCK_FILE).exists()
    RunLock(run).acquire().release()  # free again


def test_a_dead_drivers_lock_is_taken_over(tmp_path):
    from benchmark.results.run_dir import LOCK_FILE
    from benchmark.sweep.lock import RunLock

    run = tmp_path / "run"
    # A driver on this host that was killed (-9): its pid is gone.
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from benchmark.sweep.lock import RunLock; "
                             f"RunLock({str(run)!r}).acquire(); print('held', flush=True); "
                             "import time; time.sleep(60)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait()
    lock = RunLock(run).acquire()
    assert lock.took_over and lock.took_over["pid"] == proc.pid and "is gone" in lock.took_over["reason"]
    lock.release()

    # A driver on another machine whose heartbeat stopped long ago.
    (run / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "x", "started_at": 0,
                                              "heartbeat_at": time.time() - 500}))
    lock = RunLock(run, stale_s=120).acquire()
    assert lock.took_over["host"] == "elsewhere" and "no heartbeat" in lock.took_over["reason"]
    lock.release()

    # ... but not while its heartbeat is fresh.
    from benchmark.sweep.lock import LockHeld

    (run / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "x", "started_at": 0,
                                              "heartbeat_at": time.time()}))
    with pytest.raises(LockHeld, match="120 s after its last heartbeat"):
        RunLock(run, stale_s=120).acquire()


def test_the_heartbeat_refreshes_and_a_lost_lock_stops_the_driver(tmp_path, monkeypatch):
    from benchmark.sweep import lock as lock_mod

    kills = []
    monkeypatch.setattr(lock_mod.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    lock = lock_mod.RunLock(tmp_path, heartbeat_s=0.05).acquire()
    first = json.loads(lock.path.read_text())["heartbeat_at"]
    time.sleep(0.3)
    assert json.loads(lock.path.read_text())["heartbeat_at"] > first
    lock.path.write_text(json.dumps({"host": "other", "pid": 2, "token": "theirs", "heartbeat_at": time.time()}))
    deadline = time.time() + 5
    while not kills and time.time() < deadline:
        time.sleep(0.05)
    assert kills == [(os.getpid(), signal.SIGINT)]
    lock.release()
    assert json.loads(lock.path.read_text())["token"] == "theirs"  # not ours to remove


def test_sweep_refuses_a_locked_run_directory_before_anything_is_written(tmp_path):
    from benchmark.plan.spec import load_spec
    from benchmark.sweep.coordinator import run_sweep
    from benchmark.sweep.lock import LockHeld, RunLock

    holder = RunLock(tmp_path / "runs" / "smoke").acquire()
    try:
        t0 = time.time()
        with pytest.raises(LockHeld, match="in use by another driver"):
            run_sweep(load_spec(SMOKE), tmp_path / "runs")
        assert time.time() - t0 < 10
        assert sorted(p.name for p in (tmp_path / "runs" / "smoke").iterdir()) == ["driver.lock"]
    finally:
        holder.release()


def test_the_lock_record_names_its_driver_and_holder_reads_it(tmp_path):
    from benchmark.sweep.lock import RunLock, holder

    assert holder(tmp_path) is None
    with RunLock(tmp_path, command="tunevlseg run x.yaml", heartbeat_s=60) as lock:
        record = holder(tmp_path)
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        assert record["command"] == "tunevlseg run x.yaml" and record["token"] == lock.token
        assert record["started_at"] <= record["heartbeat_at"] <= time.time()
    assert holder(tmp_path) is None


@pytest.mark.parametrize("change, reason", [
    ({"boot_id": "another-boot"}, "its host rebooted since"),
    ({"pid_start": "1"}, "is another process now"),
])
def test_a_reused_pid_or_a_reboot_is_a_dead_driver(tmp_path, change, reason):
    from benchmark.sweep.lock import RunLock, boot_id, process_start

    if not boot_id() or not process_start(os.getpid()):
        pytest.skip("needs /proc")
    lock = RunLock(tmp_path)
    alive = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
             "boot_id": boot_id(), "heartbeat_at": 0}
    assert lock.dead_reason(alive) is None  # alive on this host: an old heartbeat is not death
    assert reason in lock.dead_reason({**alive, **change})


def test_wait_until_quiet_waits_for_the_last_write(tmp_path):
    from benchmark.sweep.lock import wait_until_quiet

    assert wait_until_quiet(tmp_path / "missing", 1.0, 5.0) == 0.0
    (tmp_path / "f").write_text("x")
    waited = wait_until_quiet(tmp_path, 0.3, 5.0)
    assert 0.2 <= waited < 5.0
    os.utime(tmp_path / "f", (time.time() + 60, time.time() + 60))  # a write "in the future": never quiet
    assert wait_until_quiet(tmp_path, 0.3, 0.5) >= 0.5
