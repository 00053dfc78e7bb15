"""One driver per run directory: `<run dir>/driver.lock`.

Two drivers on one run directory each treat the other's trials as orphans and delete their rows and MLflow
runs, so a second `tunevlseg run` must stop at once. The lock is a file created with O_CREAT|O_EXCL (atomic
on local file systems and on NFSv3+), holding JSON: host, pid, the process's start time, the host's boot
id, a random token, when the driver started and its last heartbeat. A thread rewrites the heartbeat every
`HEARTBEAT_S`.

A holder is dead, and its lock is taken over without any manual step, when
- it ran on this host and its pid is gone, belongs to a newer process (start time differs) or the host
  rebooted since (boot id differs); or
- its heartbeat is older than `STALE_S` (the only test that works across hosts: a driver on another
  machine that lost power).
Take-over renames the dead lock aside (`driver.lock.dead-*`) and creates a fresh one with O_EXCL, so of
two drivers taking over at once exactly one wins. A holder whose lock was taken over anyway (its
heartbeat stalled past STALE_S, e.g. a suspended laptop) notices at its next beat and stops its sweep
with SIGINT (state saved, resumable) rather than write alongside the new driver. (Its heartbeat rewrite
and a take-over from another host can still cross within one beat; a take-over needs STALE_S of silence
first, so that window only opens for a driver that stalled for minutes.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmark.results.run_dir import RunDir
from trainables.config import ConfigError

HEARTBEAT_S = float(os.environ.get("TUNEVLSEG_LOCK_HEARTBEAT_S", "15"))
STALE_S = float(os.environ.get("TUNEVLSEG_LOCK_STALE_S", "120"))
# After taking over a dead driver's lock: its Ray workers may still write checkpoints into tune/ for a
# moment (measured ~1 s after a SIGKILL, issue 25); wait until the run directory has been quiet this long
# (at most QUIET_MAX_S) before restoring from it.
QUIET_S = float(os.environ.get("TUNEVLSEG_LOCK_QUIET_S", "2"))
QUIET_MAX_S = 30.0

logger = logging.getLogger("tunevlseg.lock")


class LockHeld(ConfigError):
    """Another live driver holds the run directory."""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): tells a reused pid
    from the original process. Empty where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class RunLock:
    """`with RunLock(run_dir, command="tunevlseg run ..."):` holds the run directory for this driver."""

    def __init__(self, run_dir: str | Path, command: str = "", heartbeat_s: float | None = None,
                 stale_s: float | None = None):
        self.run_dir = Path(run_dir)
        self.path = RunDir(self.run_dir).lock_file
        self.command = command
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.stale_s = STALE_S if stale_s is None else stale_s
        self.token = uuid.uuid4().hex
        self.took_over: dict[str, Any] | None = None
        self.quiet_after = 0.0  # seconds waited for a dead driver's workers to stop writing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    # -- the record
    def _record(self, started: float) -> dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start(pid), "boot_id": boot_id(),
                "token": self.token, "started_at": started, "heartbeat_at": time.time(), "command": self.command}

    def _read(self, path: Path | None = None) -> dict[str, Any] | None:
        try:
            data = json.loads((path or self.path).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A lock a driver was writing when it died (O_EXCL created, JSON not yet written): judge it by
            # the file's age alone.
            try:
                mtime = (path or self.path).stat().st_mtime
            except FileNotFoundError:
                return None
            return {"host": "?", "pid": -1, "token": "", "started_at": mtime, "heartbeat_at": mtime}
        return data if isinstance(data, dict) else None

    def dead_reason(self, holder: dict[str, Any]) -> str | None:
        """Why `holder` is no longer running, or None when it may be alive."""
        same_host = holder.get("host") == socket.gethostname()
        if same_host and holder.get("boot_id") and holder.get("boot_id") != boot_id():
            return "its host rebooted since"
        if same_host and isinstance(holder.get("pid"), int) and holder["pid"] > 0:
            pid = holder["pid"]
            if not pid_alive(pid):
                return f"pid {pid} is gone"
            if holder.get("pid_start") and process_start(pid) and process_start(pid) != holder["pid_start"]:
                return f"pid {pid} is another process now"
            return None  # alive on this host: a stalled heartbeat is not death
        age = time.time() - float(holder.get("heartbeat_at") or 0)
        if age > self.stale_s:
            return f"no heartbeat for {_age(holder.get('heartbeat_at') or 0)} (> {self.stale_s:g} s)"
        return None

    def _message(self, holder: dict[str, Any]) -> str:
        since, beat = holder.get("started_at"), holder.get("heartbeat_at")
        auto = ("as soon as its process is gone" if holder.get("host") == socket.gethostname()
                else f"{self.stale_s:g} s after its last heartbeat")
        return (f"{self.run_dir} is in use by another driver: pid {holder.get('pid')} on {holder.get('host')}, "
                f"since {_when(since) if since else '?'}, last heartbeat {_age(beat) if beat else '?'} ago"
                + (f" ({holder['command']})" if holder.get("command") else "")
                + f". Wait for it, stop it (Ctrl-C), or use another --storage. If that driver is dead its lock is "
                f"taken over automatically {auto}; to take over at once, delete {self.path} (only once you are "
                "sure that driver is gone)")

    # -- acquire / release
    def acquire(self) -> RunLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run directory {self.run_dir}: {e.strerror or e}; check the "
                              "--storage path and its permissions") from None
        started = time.time()
        for _ in range(5):
            if self._create(started):
                self._held = True
                self._thread = threading.Thread(target=self._beat, name="tunevlseg-lock", daemon=True)
                self._thread.start()
                if self.took_over:
                    self.quiet_after = wait_until_quiet(RunDir(self.run_dir).tune_dir, QUIET_S, QUIET_MAX_S)
                return self
            holder = self._read()
            if holder is None:
                continue  # released between our create and read: try again
            reason = self.dead_reason(holder)
            if reason is None:
                raise LockHeld(self._message(holder))
            self._take_over(holder, reason)
        raise LockHeld(f"{self.path}: could not take the lock (other drivers keep taking it); try again")

    def _create(self, started: float) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise ConfigError(f"cannot write to the run directory {self.run_dir}: {e.strerror or e}; "
                              "make the storage writable (or free space on it), or pass another --storage") from None
        try:
            os.write(fd, json.dumps(self._record(started)).encode())
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise ConfigError(f"cannot write to the run directory {self.run_dir}: {e.strerror or e}; free space on "
                              "the storage, or pass another --storage") from None
        os.close(fd)
        return True

    def _take_over(self, holder: dict[str, Any], reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.dead-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another driver took it over first; the next create decides
        moved = self._read(aside)
        if moved is not None and moved.get("token") != holder.get("token"):
            # Between our read and our rename another driver took over and wrote a fresh lock: give it back.
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        self.took_over = {**holder, "reason": reason}
        logger.info("took over %s from a dead driver (pid %s on %s: %s)", self.path, holder.get("pid"),
                       holder.get("host"), reason)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = self._read()
            if current is None or current.get("token") != self.token:
                logger.error("%s was taken over by another driver (pid %s on %s): stopping this sweep", self.path,
                             (current or {}).get("pid"), (current or {}).get("host"))
                self._held = False
                os.kill(os.getpid(), signal.SIGINT)  # Tune saves the state and stops; the new driver goes on
                return
            current["heartbeat_at"] = time.time()
            tmp = self.path.with_name(f"{self.path.name}.{self.token[:8]}.tmp")
            try:
                tmp.write_text(json.dumps(current))
                os.replace(tmp, self.path)
            except OSError as e:  # a full disk must not kill the driver; the pid test still holds on this host
                logger.warning("could not refresh %s: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._held:
            current = self._read()
            if current is not None and current.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _newest_write(path: Path) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:  # removed while we looked: a write all the same
                newest = time.time()
    return newest


def wait_until_quiet(path: Path, quiet_s: float, max_s: float) -> float:
    """Block until nothing under `path` has changed for `quiet_s` seconds (or `max_s` passed): the workers
    of a dead driver finish (or fail) their last writes. Returns the seconds waited."""
    t0 = time.time()
    if quiet_s <= 0 or not path.is_dir():
        return 0.0
    while time.time() - t0 < max_s:
        idle = time.time() - _newest_write(path)
        if idle >= quiet_s:
            break
        time.sleep(min(0.5, max(0.05, quiet_s - idle)))
    return time.time() - t0


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """The lock record of a run directory, None when no driver holds it (for `tunevlseg` status output)."""
    return RunLock(run_dir)._read()
