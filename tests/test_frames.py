"""lofi.data.frames: clips from folders of JPEG frames, through the same interface as
video files (read_clip on a MediaSource)."""

from __future__ import annotations

import numpy as np
import pytest

from lofi.data.frames import frame_rate, list_frames, probe_frames, read_frames_clip
from lofi.data.media import find_media
from lofi.data.media_source import MediaSource
from lofi.data.clip_times import nearest_frames, snippet_times
from lofi.data.transforms import Augment
from lofi.data.video import read_clip
from lofi.errors import OptionError, VideoDecodeError
from media_factory import clip_indices, write_frame_folder, write_indexed_video
from planner.fidelity import Fidelity


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """120 indexed frames, 48x64."""
    return write_frame_folder(tmp_path_factory.mktemp("frames") / "vid1", 120)


def test_listing_is_in_frame_number_order(tmp_path):
    root = write_frame_folder(tmp_path / "f", 12)
    (root / "notes.txt").write_text("ignored")
    files = list_frames(root)
    assert [p.name for p in files] == [f"img_{i:05d}.jpg" for i in range(1, 13)]


def test_frame_rate_prefers_the_annotation_fps_then_the_duration():
    assert frame_rate(120, duration=4.0, fps=25.0) == 25.0
    assert frame_rate(120, duration=4.0, fps=None) == 30.0
    assert frame_rate(120, duration=None, fps=None) == 30.0  # the default


def test_stride_is_passed_through_for_frame_folders(folder):
    # 120 frames over 4 s: long at stride 2 (window 16), and at stride 8 (window 64)
    fidelity = Fidelity(3, 32)
    index = clip_indices(read_clip(MediaSource("vid1", folder, "frames"), fidelity,
                                   duration=4.0, fps=30.0, stride=2))
    assert index[:, 0].tolist() == [13, 53, 93]  # floor(20 + 40 i - 7)
    assert (np.diff(index, axis=1) == 2).all()
    # 40 frames at 10 fps: long at stride 2 (>= 16), short at stride 8 (< 64)
    short = clip_indices(read_frames_clip(folder, Fidelity(2, 32), duration=4.0, fps=10.0))
    expected = nearest_frames(snippet_times(4.0, 10.0, 2, 8, 8), np.arange(120) / 10.0)
    assert (short == expected).all() and short.max() == 39
    with pytest.raises(OptionError, match="stride .* got 0$"):
        read_frames_clip(folder, fidelity, stride=0)


def test_clip_takes_exactly_the_sampled_frames(folder):
    fidelity = Fidelity(3, 32)
    clip = read_frames_clip(folder, fidelity, duration=4.0)  # 120 frames over 4 s: 30 fps
    assert clip.shape == (3, 8, 3, 32, 32) and clip.dtype.is_floating_point is False
    expected = np.rint(snippet_times(4.0, 30.0, 3, 8) * 30).astype(int)
    assert (clip_indices(clip) == expected).all()


def test_frames_and_video_of_the_same_content_give_the_same_indices(folder, tmp_path):
    video = write_indexed_video(tmp_path / "vid1.mp4", 120, 30)
    for fidelity in (Fidelity(3, 32), Fidelity(30, 32)):
        from_video = read_clip(MediaSource("vid1", video, "video"), fidelity, duration=4.0)
        from_frames = read_clip(MediaSource("vid1", folder, "frames"), fidelity, duration=4.0, fps=30.0)
        assert (clip_indices(from_video) == clip_indices(from_frames)).all()
        assert (from_video.int() - from_frames.int()).abs().max() <= 6  # H.264 vs JPEG


def test_short_folder_is_sampled_uniformly(tmp_path):
    root = write_frame_folder(tmp_path / "short", 10)
    clip = read_frames_clip(root, Fidelity(4, 32), duration=1.0)  # 10 frames < 64
    expected = nearest_frames(snippet_times(1.0, 10.0, 4, 8), np.arange(10) / 10.0)
    assert (clip_indices(clip) == expected).all()


def test_augmentation_is_reproducible(folder):
    augment = Augment(scale=(1.0, 1.3))
    a = read_frames_clip(folder, Fidelity(2, 32), augment=augment, rng=np.random.default_rng(5))
    b = read_frames_clip(folder, Fidelity(2, 32), augment=augment, rng=np.random.default_rng(5))
    assert (a == b).all()


def test_probe_counts_frames_and_reads_the_first(folder):
    info = probe_frames(folder, fps=30.0)
    assert (info.frames, info.width, info.height) == (120, 64, 48)
    assert info.duration == pytest.approx(4.0)
    assert probe_frames(folder).duration is None


def test_find_media_locates_frame_folders(folder):
    root = folder.parent
    assert find_media(root, "vid1", frames=True) == MediaSource("vid1", folder, "frames")
    assert find_media(root, "vid1") == MediaSource("vid1", folder, "frames")  # no video file there
    assert find_media(root, "vid1", frames=False) is None
    assert find_media(root, "vid2", frames=True) is None


def test_corrupt_jpeg_is_a_decode_error_naming_the_file(tmp_path):
    root = write_frame_folder(tmp_path / "bad", 8)
    broken = root / "img_00001.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(VideoDecodeError, match="img_00001.jpg: cannot decode the JPEG frame"):
        read_frames_clip(root, Fidelity(1, 32))
    with pytest.raises(VideoDecodeError, match="img_00001.jpg"):
        probe_frames(root)


def test_folder_without_frames_is_a_decode_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no img_<number>.jpg frames"):
        read_frames_clip(tmp_path / "empty", Fidelity(1, 32))
