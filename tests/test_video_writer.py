"""lofi.data.video_writer: real encoding, decoded back with PyAV."""

from __future__ import annotations

import hashlib

import av
import numpy as np
import pytest

from lofi.data.video_writer import default_codec, write_video


def _frames(n: int = 12, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    # A smooth moving gradient (compresses like video, unlike white noise).
    t = np.arange(n)[:, None, None]
    y, x = np.mgrid[0:h, 0:w]
    base = (x[None] * 4 + y[None] * 2 + t * 9) % 256  # (N, H, W)
    rgb = np.stack([base, 255 - base, (base + 64 * seed) % 256], axis=-1)
    return rgb.astype(np.uint8)  # (N, H, W, 3)


def _decode(path) -> tuple[np.ndarray, av.VideoStream, list[bool], int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame for frame in container.decode(stream)]
        arrays = np.stack([frame.to_ndarray(format="rgb24") for frame in frames])
        keys = [bool(frame.key_frame) for frame in frames]
        return arrays, stream, keys, len(container.streams.audio)


def test_default_codec_is_h264_in_this_build():
    assert default_codec() == "libx264"


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_roundtrip_frame_count_size_fps_and_content(tmp_path, codec):
    frames = _frames()
    path = write_video(tmp_path / "clip.mp4", frames, 8.0, codec=codec, crf=18)
    decoded, stream, _, audio_streams = _decode(path)
    assert path == tmp_path / "clip.mp4"
    assert decoded.shape == frames.shape
    assert stream.average_rate == 8
    assert stream.codec_context.name == ("h264" if codec == "libx264" else "mpeg4")
    assert audio_streams == 0
    # Lossy, but close to the source.
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 8


def test_only_the_final_file_is_left(tmp_path):
    write_video(tmp_path / "a.mp4", _frames(), 10)
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_video(tmp_path / "a.mp4", _frames(), 8)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="even"):
        write_video(path, _frames(h=31), 8)
    with pytest.raises(Exception):
        write_video(path, _frames(), 8, preset="no-such-preset")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]


@pytest.mark.parametrize("size", [32, 64])
def test_same_frames_give_same_bytes(tmp_path, size):
    # Synthetic-dataset content: without `no-mbtree`, x264 gave a different file for
    # this video about one time in three.
    from lofi.data.synth import SynthConfig, action_mask, plan_dataset, video_rng
    from lofi.data.synth.scenes import plan_scene, render

    config = SynthConfig(videos=6, classes=3, seed=3, size=size, min_duration=4, max_duration=8)
    video = plan_dataset(config)[1]
    scene = plan_scene(video_rng(config, 1, "scene"), video.frames, config.fps,
                       action_mask(video), video.class_index, config.classes)
    frames = render(scene, size)
    digests = {
        hashlib.sha256(write_video(tmp_path / f"{i}.mp4", frames, 8, preset="veryfast",
                                   keyframe_interval=32).read_bytes()).hexdigest()
        for i in range(6)
    }
    assert len(digests) == 1


def test_keyframe_interval_is_exact(tmp_path):
    path = write_video(tmp_path / "k.mp4", _frames(n=20), 8, keyframe_interval=5)
    _, _, keys, _ = _decode(path)
    assert [i for i, key in enumerate(keys) if key] == [0, 5, 10, 15]


def test_audio_track_is_added_and_video_unchanged(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "av.mp4", frames, 8, audio=True)
    decoded, _, _, audio_streams = _decode(path)
    assert audio_streams == 1
    assert decoded.shape == frames.shape


def test_fractional_fps_and_timestamps(tmp_path):
    path = write_video(tmp_path / "ntsc.mp4", _frames(n=6), 30000 / 1001)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [frame.time for frame in container.decode(stream)]
        assert float(stream.average_rate) == pytest.approx(29.97, abs=1e-3)
    assert times == pytest.approx([i * 1001 / 30000 for i in range(6)], abs=1e-3)


@pytest.mark.parametrize(
    ("frames", "fps", "suffix", "match"),
    [
        (np.zeros((0, 8, 8, 3), np.uint8), 8, ".mp4", "no frames"),
        (np.zeros((2, 8, 8, 3), np.float32), 8, ".mp4", "uint8"),
        (np.zeros((2, 8, 8), np.uint8), 8, ".mp4", r"\(N, H, W, 3\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), 0, ".mp4", "fps"),
        (np.zeros((2, 8, 8, 3), np.uint8), 8, ".webm", "suffix"),
    ],
)
def test_bad_input_is_rejected_with_the_path(tmp_path, frames, fps, suffix, match):
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / f"bad{suffix}", frames, fps)
    assert list(tmp_path.iterdir()) == []


def test_unknown_codec_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no 'nonsense' encoder"):
        write_video(tmp_path / "x.mp4", _frames(n=2), 8, codec="nonsense")
