"""lofi.data.dataset: items, fidelity switching, skipped corrupt media, collate, and a
real DataLoader with a worker process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lofi.data.annotations import Segment, VideoRecord
from lofi.data.dataset import ClipBatch, ClipSample, SkippedSample, VideoDataset, collate_clips
from lofi.data.media_source import MediaSource
from lofi.errors import OptionError
from media_factory import clip_indices, garbage_file, write_indexed_video
from planner.fidelity import Fidelity

CLASSES = ("Jump", "Run")
LOW, HIGH = Fidelity(2, 32), Fidelity(4, 48)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    media = {
        "a": MediaSource("a", write_indexed_video(root / "a.mp4", 90, 30), "video"),
        "b": MediaSource("b", write_indexed_video(root / "b.mp4", 60, 30), "video"),
        "bad": MediaSource("bad", garbage_file(root / "bad.mp4"), "video"),
    }
    records = [
        VideoRecord("a", "training", 3.0, None, (Segment(0.5, 1.5, "Run"), Segment(2.0, 2.5, "Jump"))),
        VideoRecord("b", "training", 2.0, None, ()),
        VideoRecord("bad", "training", 5.0, None, (Segment(1.0, 2.0, "Jump"),)),
        VideoRecord("gone", "training", 5.0, None, ()),
    ]
    return records, media


def test_item_holds_clip_and_ground_truth(setup):
    records, media = setup
    dataset = VideoDataset(records, media, LOW, CLASSES)
    assert len(dataset) == 3 and dataset.missing == ("gone",)
    item = dataset[0]
    assert isinstance(item, ClipSample) and item.video_id == "a"
    assert item.clip.shape == (2, 8, 3, 32, 32) and item.clip.dtype == torch.uint8
    assert item.duration == 3.0 and item.fidelity == LOW
    assert item.segments.dtype == torch.float32
    assert item.segments.tolist() == [[0.5, 1.5], [2.0, 2.5]]
    assert item.labels.dtype == torch.int64 and item.labels.tolist() == [1, 0]
    empty = dataset[1]
    assert empty.segments.shape == (0, 2) and empty.labels.shape == (0,)


def test_fidelity_can_be_chosen_per_item(setup):
    records, media = setup
    dataset = VideoDataset(records, media, LOW, CLASSES)
    item = dataset[(0, HIGH)]
    assert item.clip.shape == (4, 8, 3, 48, 48) and item.fidelity == HIGH


def test_corrupt_media_is_skipped_and_counted_not_raised(setup):
    records, media = setup
    dataset = VideoDataset(records, media, LOW, CLASSES)
    item = dataset[2]
    assert isinstance(item, SkippedSample) and item.video_id == "bad"
    assert "bad.mp4" in item.reason and item.fidelity == LOW
    assert dataset.skipped == 1


def test_collate_stacks_good_items_and_lists_skipped(setup):
    records, media = setup
    dataset = VideoDataset(records, media, LOW, CLASSES)
    batch = collate_clips([dataset[0], dataset[2], dataset[1]])
    assert isinstance(batch, ClipBatch)
    assert batch.video_ids == ["a", "b"] and batch.fidelity == LOW
    assert batch.clips.shape == (2, 2, 8, 3, 32, 32) and batch.clips.dtype == torch.uint8
    assert batch.durations.dtype == torch.float64 and batch.durations.tolist() == [3.0, 2.0]
    assert [s.shape[0] for s in batch.segments] == [2, 0] and len(batch.labels) == 2
    assert [s.video_id for s in batch.skipped] == ["bad"]
    only_skipped = collate_clips([dataset[2]])
    assert only_skipped.clips.shape == (0, 2, 8, 3, 32, 32) and only_skipped.video_ids == []
    with pytest.raises(ValueError, match="mixes fidelities"):
        collate_clips([dataset[0], dataset[(1, HIGH)]])


def test_dataloader_worker_yields_batches_and_skips(setup):
    records, media = setup
    dataset = VideoDataset(records, media, LOW, CLASSES, decoder_threads=1)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate_clips)
    batches = list(loader)
    assert [b.video_ids for b in batches] == [["a", "b"], []]
    assert [s.video_id for b in batches for s in b.skipped] == ["bad"]


def test_augmentation_is_seeded_by_seed_epoch_and_index(setup):
    records, media = setup
    a = VideoDataset(records, media, Fidelity(1, 32), CLASSES, augment=True, seed=3)
    b = VideoDataset(records, media, Fidelity(1, 32), CLASSES, augment=True, seed=3)
    assert (a[0].clip == b[0].clip).all()
    # indices are still the sampled frames: augmentation is spatial only
    assert (clip_indices(a[0].clip) == clip_indices(VideoDataset(records, media, Fidelity(1, 32),
                                                                  CLASSES)[0].clip)).all()
    seen = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        seen.add(a[0].clip.numpy().tobytes())
    assert len(seen) > 1


def test_labels_outside_the_class_list_are_an_error(setup):
    records, media = setup
    with pytest.raises(OptionError, match="video 'a': label 'Run' is not in the class list"):
        VideoDataset(records, media, LOW, ("Jump",))


def test_clip_frames_follow_the_record_duration(setup):
    records, media = setup
    dataset = VideoDataset(records, media, Fidelity(2, 32), CLASSES)
    index = clip_indices(dataset[0].clip)  # 90 frames over 3.0 s, centres 22.5 and 67.5
    assert index[:, 0].tolist() == [0, 33]  # both windows shifted inside [0, 90)
    assert (np.diff(index, axis=1) == 8).all()


def test_stride_applies_to_every_item(setup):
    records, media = setup
    dataset = VideoDataset(records, media, Fidelity(2, 32), CLASSES, stride=2)
    assert dataset.stride == 2
    a = clip_indices(dataset[0].clip)  # 90 frames: centres 22.5 and 67.5, window 16 frames
    assert a.tolist() == [list(range(15, 31, 2)), list(range(60, 76, 2))]
    # "b" has 60 frames: long at stride 2 here, short (uniform) at the default stride 8
    b = clip_indices(dataset[(1, Fidelity(1, 32))].clip)
    assert b.tolist() == [list(range(23, 39, 2))]
    uniform = clip_indices(VideoDataset(records, media, Fidelity(1, 32), CLASSES)[1].clip)
    assert uniform.tolist() == [[4, 11, 19, 26, 34, 41, 49, 56]]  # at (k + 0.5) / 4 s
    for bad in (0, -1, 1.5):
        with pytest.raises(OptionError, match=f"stride .* got {bad!r}$"):
            VideoDataset(records, media, LOW, CLASSES, stride=bad)
