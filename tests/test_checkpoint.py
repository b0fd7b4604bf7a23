"""Checkpoints: atomic, previous kept, corrupt latest falls back, weights_only load."""

from __future__ import annotations

import warnings

import pytest
import torch

from lofi.errors import CheckpointError
from planner.atomic_files import atomic_write_json
from lofi.train.checkpoint import LATEST, PREVIOUS, has_checkpoint, load_checkpoint, save_checkpoint


def test_save_then_load_round_trip(tmp_path):
    save_checkpoint(tmp_path, {"step": 1, "weights": torch.arange(4.0)})
    loaded = load_checkpoint(tmp_path)
    assert loaded.state["step"] == 1
    assert torch.equal(loaded.state["weights"], torch.arange(4.0))
    assert not loaded.fell_back
    assert not (tmp_path / PREVIOUS).exists()


def test_second_save_keeps_the_first_as_previous(tmp_path):
    save_checkpoint(tmp_path, {"step": 1})
    save_checkpoint(tmp_path, {"step": 2})
    assert torch.load(tmp_path / PREVIOUS, weights_only=True)["step"] == 1
    assert load_checkpoint(tmp_path).state["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_corrupt_latest_falls_back_to_previous_with_a_warning(tmp_path):
    save_checkpoint(tmp_path, {"step": 1})
    save_checkpoint(tmp_path, {"step": 2})
    latest = tmp_path / LATEST
    latest.write_bytes(latest.read_bytes()[:20])  # truncated, as after a crash mid-copy
    with pytest.warns(RuntimeWarning, match="unreadable"):
        loaded = load_checkpoint(tmp_path)
    assert loaded.fell_back and loaded.state["step"] == 1


def test_nothing_readable_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / LATEST).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_checkpoint(tmp_path)
    assert has_checkpoint(tmp_path)


class Payload:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def test_untrusted_pickles_are_refused(tmp_path):
    torch.save({"object": Payload()}, tmp_path / LATEST)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "doc.json"
    atomic_write_json(target, {"a": 1})

    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})  # not serialisable
    assert target.read_text().strip().startswith("{")
    assert '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_default_run_names_count_up_and_resume_takes_the_latest(tmp_path):
    from lofi.train.run_folder import numbered_run

    assert numbered_run(tmp_path, "lofi", existing=False).root.name == "lofi"
    (tmp_path / "lofi").mkdir()
    (tmp_path / "lofi" / "config.json").write_text("{}")
    assert numbered_run(tmp_path, "lofi", existing=False).root.name == "lofi-2"
    assert numbered_run(tmp_path, "lofi", existing=True).root.name == "lofi"
    (tmp_path / "lofi-2").mkdir()
    (tmp_path / "lofi-2" / "config.json").write_text("{}")
    assert numbered_run(tmp_path, "lofi", existing=True).root.name == "lofi-2"
    assert numbered_run(tmp_path, "baseline", existing=False).root.name == "baseline"


CRASHING_SAVE = """
import os, signal, sys
import torch
from lofi.train.checkpoint import load_checkpoint, save_checkpoint

folder, crash_at = sys.argv[1], int(sys.argv[2])
loaded = load_checkpoint(folder)  # latest.pt is corrupt: falls back to previous.pt
calls = [0]
real_replace, real_link = os.replace, os.link

def crash_on(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash at this exact point of the save
        return real(*args, **kwargs)
    return call

os.replace, os.link = crash_on(real_replace), crash_on(real_link)
save_checkpoint(folder, {"step": loaded.state["step"] + 10, "weights": torch.zeros(1000)})
print("saved")
"""


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_a_crash_while_saving_after_a_fallback_leaves_a_readable_checkpoint(tmp_path, crash_at):
    """Issue 15 (1): with a corrupt latest.pt, resuming falls back to previous.pt; a
    process killed at any file operation of the next save must leave a readable one."""
    import os
    import subprocess
    import sys

    save_checkpoint(tmp_path, {"step": 1, "weights": torch.ones(1000)})
    save_checkpoint(tmp_path, {"step": 2, "weights": torch.ones(1000)})
    latest = tmp_path / LATEST
    latest.write_bytes(latest.read_bytes()[:-200])  # truncated, as after a disk error
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", CRASHING_SAVE, str(tmp_path), str(crash_at)], env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert child.returncode in (0, -9), child.stderr[-2000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        loaded = load_checkpoint(tmp_path)
    assert loaded.state["step"] in (1, 11)  # the fallback's checkpoint, or the new one
    if child.returncode == 0:
        assert loaded.state["step"] == 11 and not loaded.fell_back
        assert torch.load(tmp_path / PREVIOUS, weights_only=True)["step"] == 1  # the corrupt one was dropped


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    from lofi.train.checkpoint import remove_temporaries

    save_checkpoint(tmp_path, {"step": 1})
    (tmp_path / ".latest.pt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".previous.pt.staging").write_bytes(b"link")
    removed = remove_temporaries(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]
