"""One run at a time in a work directory: WORKDIR/.lock, and workdir checks.

  lock = workdir_lock.lock_for_run(workdir, stage_names)  # WorkdirError
  try:
    ...train...
  finally:
    if lock is not None:
      lock.release()

`lock_for_run` first checks that the workdir can be used (not a file, not
read-only, WORKDIR/checkpoints a directory), then creates WORKDIR/.lock
atomically (a hard link of a complete file, so no one reads it half
written), holding the holder's host, pid and start time. A second run on the
workdir gets WorkdirError naming the holder. A lock whose holder is gone
(same host, no such process: e.g. after kill -9) is stale: it is reported
and taken over. A holder on another host cannot be checked; the message says
to remove the lock file once no run uses the workdir.

Multi-host runs share one workdir: process 0 alone checks and locks it, and
every process learns whether it could.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax import config as config_lib

LOCK_FILE = ".lock"

# Lock files this process holds: a lock naming this process that is not
# here was left by an earlier run in it and is stale.
_HELD: set[str] = set()


class WorkdirError(config_lib.ConfigError):
  """A work directory that cannot be used now; the message says what to do.

  A ConfigError: the command lines report it as one line and exit 2.
  """


def check_usable(workdir: str, stage_names: Sequence[str] = ()) -> None:
  """Raises WorkdirError unless a run can write into `workdir`.

  `workdir` may be missing (it is created) but not a file, nor below one;
  WORKDIR/checkpoints and WORKDIR/checkpoints/<stage> must be directories
  where they exist; an existing workdir must be writable.
  """
  paths = [os.path.join(workdir, "checkpoints")]
  paths += [os.path.join(paths[0], name) for name in stage_names]
  for path in [workdir] + paths:
    if os.path.exists(path) and not os.path.isdir(path):
      raise WorkdirError(
          f"{path} is a file, not a directory; "
          + ("pass a directory as --workdir (it is created if missing)"
             if path == workdir else
             "move it away: the run keeps its checkpoints there"))
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise WorkdirError(f"--workdir={workdir} cannot be created: {parent} is "
                       "a file; pass another --workdir")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise WorkdirError(_not_writable(workdir, parent, "permission denied"))


def _not_writable(workdir: str, where: str, why: str) -> str:
  return (f"--workdir={workdir} is not writable ({where}: {why}); make it "
          "writable or pass another --workdir")


def _process(pid: int) -> tuple[bool, int | None]:
  """(whether process `pid` runs (a zombie does not), its start time in
  clock ticks since boot or None where /proc cannot tell)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    # After "pid (comm)": state is field 3 and starttime field 22.
    return fields[0] not in ("Z", "X"), int(fields[19])
  except FileNotFoundError:
    return False, None
  except (OSError, IndexError, ValueError):
    pass
  try:  # No /proc (macOS): only whether the pid exists.
    os.kill(pid, 0)
  except ProcessLookupError:
    return False, None
  except PermissionError:
    pass  # another user's process
  return True, None


def _holder_alive(holder: dict[str, Any], path: str) -> bool | None:
  """Whether the process a lock names still runs; None: on another host."""
  pid = holder.get("pid")
  if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
    return None
  if pid == os.getpid():
    return path in _HELD
  alive, start = _process(pid)
  recorded = holder.get("proc_start")
  # Same pid, another start time: the pid was reused by another process.
  reused = start is not None and recorded is not None and start != recorded
  return alive and not reused


def _describe(holder: dict[str, Any]) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
          f"{holder.get('started')}")


def _read(path: str) -> dict[str, Any] | None:
  """The lock's holder; {} when the file is gone; None when unreadable."""
  try:
    with open(path, encoding="utf-8") as f:
      holder = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError):
    return None
  return holder if isinstance(holder, dict) and holder else None


class WorkdirLock:
  """WORKDIR/.lock held by this process (module docstring)."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.holder = {
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        "proc_start": _process(os.getpid())[1],
        "command": " ".join(sys.argv)[:500]}

  def acquire(self) -> WorkdirLock:
    """Takes the lock (a stale one too); WorkdirError when another run
    holds it or the workdir cannot be written."""
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as e:
      raise WorkdirError(
          _not_writable(self.workdir, self.workdir, e.strerror)) from e
    for _ in range(10):  # other runs may take a stale lock at the same time
      if self._create():
        _HELD.add(self.path)
        return self
      holder = _read(self.path)
      if holder == {}:
        continue  # released meanwhile
      if holder is None:
        raise WorkdirError(
            f"{self.path} is not a lock file this code can read; if no run "
            "uses this workdir, delete it and run again")
      alive = _holder_alive(holder, self.path)
      if alive is False:
        print(f"WARNING: {self.path}: the run that held this workdir "
              f"({_describe(holder)}) is gone; taking over its lock",
              flush=True)
        self._remove_stale(holder)
        continue
      where = "" if alive else (
          "; it runs on another host, so if it has stopped, delete the "
          "lock file and run again")
      raise WorkdirError(
          f"--workdir={self.workdir} is in use by another run "
          f"({_describe(holder)}; lock file {self.path}){where}. Wait for "
          "it to finish (or stop it), or pass another --workdir")
    raise WorkdirError(f"could not lock --workdir={self.workdir}: other runs "
                       "keep taking it; run one at a time")

  def _create(self) -> bool:
    """Creates the lock file complete; False when it exists."""
    tmp = f"{self.path}.{self.holder['host']}.{os.getpid()}.tmp"
    try:
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump(self.holder, f)
      try:
        os.link(tmp, self.path)  # atomic, and fails when the lock exists
        return True
      except FileExistsError:
        return False
      except OSError:  # no hard links here: create it exclusively instead
        try:
          fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
          return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
          json.dump(self.holder, f)
        return True
    except OSError as e:
      raise WorkdirError(
          _not_writable(self.workdir, self.workdir, e.strerror)) from e
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)

  def _remove_stale(self, holder: dict[str, Any]) -> None:
    """Removes the lock of `holder`, and no other run's lock."""
    aside = f"{self.path}.stale.{os.getpid()}"
    try:
      os.rename(self.path, aside)  # of several takers, one wins
    except FileNotFoundError:
      return
    if _read(aside) != holder:
      # Another run took over the stale lock first: this is its new lock.
      try:
        os.link(aside, self.path)
      except OSError:
        pass
    os.unlink(aside)

  def release(self) -> None:
    """Removes the lock file if this process still holds it."""
    if self.path not in _HELD:
      return
    _HELD.discard(self.path)
    if _read(self.path) == self.holder:
      os.unlink(self.path)

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def lock_for_run(workdir: str, stage_names: Sequence[str] = ()
                 ) -> WorkdirLock | None:
  """Checks and locks `workdir` for a run (process 0 does it; the others
  learn whether it could). The lock, None on processes other than 0.

  Raises:
    WorkdirError: the workdir cannot be used (check_usable) or another run
      holds it.
  """
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      check_usable(workdir, stage_names)
      lock = WorkdirLock(workdir).acquire()
    except WorkdirError as e:
      error = e
  if jax.process_count() > 1:
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not int(ok) and jax.process_index() != 0:
      raise WorkdirError(f"process 0 could not use --workdir={workdir}; its "
                         "error says why")
  if error is not None:
    raise error
  return lock
