"""The run folder `runs/<name>/` and what is written into it.

    config.json        the resolved TrainConfig
    plan.json          the plan the run follows
    metrics.jsonl      one JSON object per logged step / epoch / stage
    lofi/              checkpoints of the LoFi stage (latest.pt, previous.pt)
    head/              checkpoints of the head stage
    features/          full-fidelity features, one file per video, plus index.json
    results.json       detections (or proposals) in the official ActivityNet format
    summary.json       metrics, times, peak memory measured vs planned, fallbacks

One writer per run folder, and no debris from a run that failed to start:
`claim_run_folder(root)` takes an exclusive lock (`flock`) on `.<name>.lock` beside the
run folder (beside, so that `--overwrite` can delete the folder while holding it) and
writes its pid into it. A second `lofi train` on the same folder is refused with the
holder's pid. The kernel drops a `flock` when its process dies, so the lock of a killed
run (kill -9, power loss) is stale by construction; the next claim says so, naming the
dead pid. The lock file is removed on release.

While the folder is claimed, nothing else writes into it: the temporaries a killed
checkpoint save left (`.latest.pt.*.tmp`) are removed. If the claim ends with an error
before the run started (no checkpoint, no metrics: only the files a start writes), what
that start wrote is removed again, so that a retry needs no `--overwrite`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofi.errors import OptionError


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def lofi_checkpoints(self) -> Path:
        return self.root / "lofi"

    @property
    def head_checkpoints(self) -> Path:
        return self.root / "head"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def proposals(self) -> Path:
        return self.root / "proposals.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def create(self) -> RunFolder:
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def run_folder(runs_dir: str | os.PathLike, name: str) -> RunFolder:
    """`runs_dir/name`, refusing names that would escape runs_dir."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name:
        raise OptionError(f"run name {name!r} must be a plain folder name")
    return RunFolder(Path(runs_dir) / name)


def numbered_run(runs_dir: str | os.PathLike, stem: str, *, existing: bool) -> RunFolder:
    """`stem`, `stem-2`, `stem-3`, ... under runs_dir: the latest that exists when
    `existing` (to resume), else the first that does not hold a run yet."""
    def name(number: int) -> str:
        return stem if number == 1 else f"{stem}-{number}"

    number = 1
    while _holds_run(Path(runs_dir) / name(number)):
        number += 1
    if existing and number > 1:
        number -= 1
    return run_folder(runs_dir, name(number))


def _holds_run(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


class MetricsLog:
    """Appends one JSON line per record (flushed and fsynced: a crash loses at most the
    line being written). Only the main rank writes."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())


# --- one writer per run folder ---------------------------------------------------------

# What a run writes before its first training step; only these (and empty folders) are
# removed when a start fails.
START_FILES = frozenset({"config.json", "plan.json", "media_problems.txt", "summary.json"})


@dataclass(frozen=True)
class Claim:
    root: Path
    lock: Path
    stale_pid: int | None  # the dead process whose lock this claim replaced


def lock_path(root: Path) -> Path:
    return root.parent / f".{root.name}.lock"


@contextlib.contextmanager
def claim_run_folder(root: str | os.PathLike, *, enabled: bool = True,
                     notify: Callable[[str], None] | None = None) -> Iterator[Claim | None]:
    """Hold the run folder `root` for this process (see the module doc); `enabled` False
    (a non-main rank) claims nothing."""
    if not enabled:
        yield None
        return
    root = Path(root)
    descriptor, claim = _acquire(root)
    try:
        if claim.stale_pid is not None and notify is not None:
            notify(f"{root}: the lock of pid {claim.stale_pid} (no longer running) was stale; taken over")
        _remove_stale_temporaries(root)
        before = _entries(root)
        try:
            yield claim
        except BaseException as error:
            if not (isinstance(error, SystemExit) and error.code in (0, None)):
                _forget_failed_start(root, before)
            raise
    finally:
        _release(claim.lock, descriptor)


def _acquire(root: Path) -> tuple[int, Claim]:
    import fcntl

    path = lock_path(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OptionError(f"cannot create the runs folder {root.parent}: {error.strerror}") from None
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OptionError(f"cannot write into the runs folder {root.parent}: {error.strerror}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_pid(descriptor)
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OptionError(f"cannot lock {path}: {error.strerror}") from None
            who = f"pid {holder}" if holder is not None else "another process"
            raise OptionError(f"{root} is in use by another lofi train ({who}); wait for it to finish, or "
                              "choose another --name") from None
        if _same_file(descriptor, path):
            break
        os.close(descriptor)  # the holder removed the file between our open and flock: retry
    previous = _read_pid(descriptor)
    stale = previous if previous is not None and previous != os.getpid() and not _alive(previous) else None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n{socket.gethostname()}\n".encode(), 0)
    return descriptor, Claim(root, path, stale)


def _release(path: Path, descriptor: int) -> None:
    # Unlink first, then unlock: a process waiting on this file finds it gone (_same_file).
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_pid(descriptor: int) -> int | None:
    try:
        text = os.pread(descriptor, 200, 0).decode("utf-8", "replace")
        return int(text.split()[0]) if text.split() else None
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def _remove_stale_temporaries(root: Path) -> None:
    from lofi.train.checkpoint import remove_temporaries
    from lofi.train.run_folder import RunFolder

    run = RunFolder(root)
    for folder in (run.lofi_checkpoints, run.head_checkpoints):
        if folder.is_dir():
            remove_temporaries(folder)


def _entries(root: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (inode, size, mtime) of what `root` holds now."""
    if not root.is_dir():
        return {}
    out = {}
    for entry in os.scandir(root):
        status = entry.stat(follow_symlinks=False)
        out[entry.name] = (status.st_ino, status.st_size, status.st_mtime_ns)
    return out


def _forget_failed_start(root: Path, before: dict[str, tuple[int, int, int]]) -> None:
    """Remove what this claim wrote into `root` when it is only what a start writes."""
    after = _entries(root)
    written = [name for name, identity in after.items() if before.get(name) != identity]
    if not written or any(name in before for name in written):
        return  # nothing written, or a run that was there before (resume, --stage): keep it
    if not all(name in START_FILES or _empty_folder(root / name) for name in written):
        return  # the run got going (checkpoints, metrics): keep it for --resume
    for name in written:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if not before:
        with contextlib.suppress(OSError):
            root.rmdir()  # only if empty


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())
