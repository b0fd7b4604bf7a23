"""lofi.data.clip_times (pure) and lofi.data.video (PyAV decoding of real files).

Decoding tests use "indexed" videos whose frame i is a flat colour encoding i, so the
test reads back exactly which source frame filled each slot of the clip."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lofi.data.clip_times import (Run, TimestampGuesser, check_stride, decoded_fraction, frame_count,
                                is_short, nearest_frames, plan_runs, snippet_times)
from lofi.data.transforms import Augment, plan_crop, resized_size
from lofi.data.media_source import MediaSource
from lofi.data.video import decode_plan, probe_video, read_clip, read_video_clip
from lofi.errors import OptionError, VideoDecodeError
from media_factory import (clip_indices, garbage_file, truncated_copy, write_audio_only,
                           write_faststart_video, write_indexed_video, write_vfr_video,
                           write_webm_video)
from planner.fidelity import Fidelity
from shared_data import REAL_VIDEOS, SHARED_VIDEOS, require

# ---------------------------------------------------------------- sampling (pure)


def test_long_video_snippets_are_64_frame_windows_at_stride_8():
    times = snippet_times(10.0, 30.0, tr=4, frames_per_snippet=8)  # 300 frames
    index = np.rint(times * 30).astype(int)  # (4, 8)
    # centres (i + 0.5) * 300 / 4 = 37.5, 112.5, ...; first sample floor(centre - 28)
    assert index[:, 0].tolist() == [9, 84, 159, 234]
    assert (np.diff(index, axis=1) == 8).all()


def test_windows_at_the_ends_are_shifted_inside_the_video():
    index = np.rint(snippet_times(10.0, 30.0, tr=100, frames_per_snippet=8) * 30).astype(int)
    assert index.shape == (100, 8)
    assert index.min() == 0 and index.max() == 299
    assert index[0].tolist() == list(range(0, 64, 8))
    assert index[-1].tolist() == list(range(243, 300, 8))
    assert (np.diff(index[:, 0]) >= 0).all()  # snippet starts never go back


def test_short_video_is_sampled_uniformly_over_its_duration():
    # 1.0 s at 30 fps = 30 frames < 64: TR*F instants at slice centres; frames repeat.
    assert is_short(1.0, 30.0, 8) and not is_short(64 / 30, 30.0, 8)
    times = snippet_times(1.0, 30.0, tr=10, frames_per_snippet=8)
    assert times.shape == (10, 8)
    flat = times.reshape(-1)
    assert np.allclose(np.diff(flat), 1.0 / 80)
    assert flat[0] == pytest.approx(0.5 / 80) and flat[-1] == pytest.approx(1 - 0.5 / 80)
    frames = nearest_frames(times, np.arange(30) / 30.0)
    assert frames.min() == 0 and frames.max() == 29
    assert len(np.unique(frames)) == 30  # every frame used, some twice


def test_stride_sets_the_window_and_the_short_video_rule():
    # 60 frames (2 s at 30 fps): one window is 16 frames at stride 2 (long), 64 at 8 (short)
    assert not is_short(2.0, 30.0, 8, stride=2) and is_short(2.0, 30.0, 8, stride=8)
    index = np.rint(snippet_times(2.0, 30.0, tr=2, frames_per_snippet=8, stride=2) * 30).astype(int)
    # centres 15 and 45; first sample floor(centre - 7 * 2 / 2)
    assert index.tolist() == [list(range(8, 24, 2)), list(range(38, 54, 2))]
    uniform = snippet_times(2.0, 30.0, tr=2, frames_per_snippet=8, stride=8)
    assert np.allclose(np.diff(uniform.reshape(-1)), 2.0 / 16)
    assert check_stride(np.int64(3)) == 3 and type(check_stride(np.int64(3))) is int


@settings(max_examples=60, deadline=None)
@given(duration=st.floats(0.05, 4000), fps=st.floats(5, 120), tr=st.integers(1, 128),
       f=st.integers(1, 16), stride=st.integers(1, 16))
def test_snippet_times_stay_inside_the_video(duration, fps, tr, f, stride):
    times = snippet_times(duration, fps, tr, f, stride)
    assert times.shape == (tr, f)
    assert (times >= 0).all() and (times < duration + 1e-9).all()
    assert (np.diff(times, axis=1) > 0).all()  # frames of a snippet in time order
    assert (np.diff(times[:, 0]) >= 0).all()
    assert frame_count(duration, fps) >= 1


def test_nearest_frames_with_variable_frame_times():
    frame_times = np.array([0.0, 0.1, 0.15, 0.5, 0.52])
    targets = np.array([0.0, 0.04, 0.05, 0.06, 0.3, 0.33, 0.51, 9.0, -1.0])
    # ties (0.05 between 0.0 and 0.1) go to the earlier frame
    assert nearest_frames(targets, frame_times).tolist() == [0, 0, 0, 1, 2, 3, 3, 4, 0]


def test_timestamp_guesser_switches_to_dts_when_pts_go_back():
    # decoded frames of the shared AVI: pts 1, 2, 4, 3, 5, 7, 6, 8 with dts 1..8
    guess = TimestampGuesser()
    chosen = [guess(pts, dts) for pts, dts in zip([1, 2, 4, 3, 5, 7, 6, 8], range(1, 9))]
    assert chosen == [1, 2, 4, 4, 5, 6, 7, 8]
    mp4 = TimestampGuesser()
    assert [mp4(pts, None) for pts in [0, 512, 1024]] == [0, 512, 1024]


def test_plan_runs_dense_targets_make_one_sequential_run():
    targets = np.arange(0, 60, 8) / 30.0  # every 8th frame: gaps far below a GOP
    keyframes = np.arange(0, 3, 0.5)
    assert plan_runs(targets, keyframes, 1 / 30) == [Run(None, 0, targets.size - 1)]


def test_plan_runs_sparse_targets_seek_to_the_keyframe_before_each_region():
    targets = np.array([0.2, 0.3, 10.2, 10.3, 20.6])
    keyframes = np.arange(0.0, 30.0, 1.0)  # one every second
    runs = plan_runs(targets, keyframes, 1 / 30)
    assert runs == [Run(None, 0, 1), Run(10.0, 2, 3), Run(20.0, 4, 4)]
    assert decoded_fraction(runs, targets, 30.0) == pytest.approx((0.3 + 0.3 + 0.6) / 30)


def test_plan_runs_never_seeks_without_a_keyframe_ahead():
    targets = np.array([0.2, 10.2, 20.6])
    assert plan_runs(targets, np.array([0.0]), 1 / 30) == [Run(None, 0, 2)]
    keyframes = np.array([0.0, 5.0, 10.0])
    assert plan_runs(np.array([0.1, 5.2]), keyframes, 1 / 30) == [Run(None, 0, 0), Run(5.0, 1, 1)]
    # within a frame of a keyframe the nearest frame may precede it: no seek to it
    assert plan_runs(np.array([0.1, 5.01]), keyframes, 1 / 30) == [Run(None, 0, 1)]


def test_crop_plans():
    assert resized_size(320, 240, 112) == (149, 112)
    assert resized_size(180, 320, 64) == (64, 114)
    centre = plan_crop(320, 240, 112)
    assert (centre.width, centre.height, centre.left, centre.top, centre.flip) == (149, 112, 18, 0, False)
    augment = Augment(scale=(1.0, 1.3))
    for seed in range(20):
        plan = plan_crop(320, 240, 112, augment, np.random.default_rng(seed))
        assert 112 <= plan.height <= round(112 * 1.3)
        assert 0 <= plan.left <= plan.width - 112 and 0 <= plan.top <= plan.height - 112
    flips = {plan_crop(320, 240, 112, augment, np.random.default_rng(s)).flip for s in range(20)}
    assert flips == {True, False}
    with pytest.raises(ValueError, match="scale"):
        Augment(scale=(0.5, 1.0))


# ---------------------------------------------------------------- decoding


def _expected(duration, fps, fidelity, stride=8):
    times = snippet_times(duration, fps, fidelity.tr, fidelity.frames_per_snippet, stride)
    return np.rint(times * fps).astype(int)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """300 frames at 30 fps (10 s), a keyframe every 10 frames."""
    return write_indexed_video(tmp_path_factory.mktemp("v") / "long.mp4", 300, 30, keyframe_interval=10)


@pytest.mark.parametrize("fidelity", [Fidelity(4, 32), Fidelity(40, 32), Fidelity(2, 48, 4)])
def test_clip_takes_exactly_the_sampled_frames(long_video, fidelity):
    clip = read_video_clip(long_video, fidelity)
    assert clip.shape == (fidelity.tr, fidelity.frames_per_snippet, 3, fidelity.sr, fidelity.sr)
    assert clip.dtype.is_floating_point is False and clip.is_contiguous()
    assert (clip_indices(clip) == _expected(10.0, 30, fidelity)).all()


def test_sparse_sampling_seeks_and_dense_does_not(long_video):
    sparse, dense = Fidelity(2, 32), Fidelity(40, 32)
    # windows start at frames 47 and 197; keyframes every 10 frames
    assert _expected(10.0, 30, sparse)[:, 0].tolist() == [47, 197]
    runs = decode_plan(long_video, sparse)
    assert [run.seek for run in runs] == pytest.approx([40 / 30, 190 / 30])
    dense_runs = decode_plan(long_video, dense)
    assert len(dense_runs) == 1 and dense_runs[0].seek is None


def test_stride_2_reads_frames_2_apart_and_the_plan_follows_the_stride(long_video):
    fidelity = Fidelity(4, 32)
    index = clip_indices(read_video_clip(long_video, fidelity, stride=2))
    assert (np.diff(index, axis=1) == 2).all()
    assert index[:, 0].tolist() == [30, 105, 180, 255]  # floor(37.5 + 75 i - 7)
    assert (index == _expected(10.0, 30, fidelity, stride=2)).all()
    # two snippets, one frame apart (stride 1): windows start at 71 and 221, so the
    # plan seeks to the keyframes at 70 and 220, not 40 and 190 as at stride 8
    runs = decode_plan(long_video, Fidelity(2, 32), stride=1)
    assert [run.seek for run in runs] == pytest.approx([70 / 30, 220 / 30])


def test_video_long_at_stride_2_but_short_at_stride_8(tmp_path):
    path = write_indexed_video(tmp_path / "two_seconds.mp4", 60, 30)  # 60 frames, 2 s
    fidelity = Fidelity(2, 32)
    long_read = clip_indices(read_clip(MediaSource("v", path, "video"), fidelity, duration=2.0,
                                       stride=2))
    assert long_read.tolist() == [list(range(8, 24, 2)), list(range(38, 54, 2))]
    short_read = clip_indices(read_video_clip(path, fidelity, duration=2.0))  # stride 8
    expected = nearest_frames(snippet_times(2.0, 30, 2, 8, 8), np.arange(60) / 30)
    assert (short_read == expected).all()
    # 16 instants 0.125 s (3.75 frames) apart over the whole 2 s, not 8-frame windows
    flat = short_read.reshape(-1)
    assert flat[0] == 2 and flat[-1] == 58 and set(np.diff(flat).tolist()) == {3, 4}


@pytest.mark.parametrize("stride", [0, -3, 2.5, True, "2"])
def test_a_bad_stride_is_an_option_error_naming_it(long_video, stride):
    fidelity = Fidelity(2, 32)
    calls = [
        lambda: read_video_clip(long_video, fidelity, stride=stride),
        lambda: read_clip(MediaSource("v", long_video, "video"), fidelity, duration=None,
                          stride=stride),
        lambda: decode_plan(long_video, fidelity, stride=stride),
    ]
    for call in calls:
        with pytest.raises(OptionError, match=f"stride .* got {re.escape(repr(stride))}$"):
            call()


def test_annotation_duration_longer_than_the_video_repeats_the_last_frame(long_video):
    clip = read_video_clip(long_video, Fidelity(4, 32), duration=12.0)
    index = clip_indices(clip)
    expected = np.minimum(_expected(12.0, 30, Fidelity(4, 32)), 299)
    assert (index == expected).all()


def test_video_shorter_than_one_snippet(tmp_path):
    path = write_indexed_video(tmp_path / "short.mp4", 20, 20)  # 1 s, 20 frames < 64
    clip = read_video_clip(path, Fidelity(5, 32))
    index = clip_indices(clip).reshape(-1)
    expected = nearest_frames(snippet_times(1.0, 20, 5, 8), np.arange(20) / 20).reshape(-1)
    assert (index == expected).all()
    assert (np.diff(index) >= 0).all() and index[0] == 0 and index[-1] == 19


def test_variable_frame_rate_maps_targets_by_timestamp(tmp_path):
    rng = np.random.default_rng(0)
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.09, 89))])
    path = write_vfr_video(tmp_path / "vfr.mkv", times.tolist())
    info = probe_video(path)
    duration = float(times[-1] + 0.05)
    clip = read_video_clip(path, Fidelity(3, 32), duration=duration)
    expected = nearest_frames(snippet_times(duration, info.fps, 3, 8), times)
    assert (clip_indices(clip) == expected).all()


def test_variable_frame_rate_with_b_frames_stays_within_one_frame(tmp_path):
    # Unneeded B-frames are dropped by the decoder; in a variable-rate stream a target
    # in a wide gap may then take the neighbour of its nearest frame (video.py).
    rng = np.random.default_rng(1)
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.09, 119))])
    path = write_vfr_video(tmp_path / "vfr_b.mkv", times.tolist(), preset="veryfast")
    info = probe_video(path)
    duration = float(times[-1] + 0.05)
    clip = read_video_clip(path, Fidelity(6, 32), duration=duration)
    expected = nearest_frames(snippet_times(duration, info.fps, 6, 8), times)
    difference = np.abs(clip_indices(clip) - expected)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.8


def test_audio_stream_is_ignored_and_mkv_works(tmp_path):
    path = write_indexed_video(tmp_path / "with_audio.mkv", 90, 30, audio=True)
    clip = read_video_clip(path, Fidelity(2, 32))
    assert (clip_indices(clip) == _expected(3.0, 30, Fidelity(2, 32))).all()


def test_webm_vp9_reads_the_sampled_frames(tmp_path):
    path = write_webm_video(tmp_path / "clip.webm", 150, 30)
    for fidelity in (Fidelity(2, 32), Fidelity(20, 32)):
        assert (clip_indices(read_video_clip(path, fidelity)) == _expected(5.0, 30, fidelity)).all()


def test_augmentation_is_reproducible_and_flips(long_video):
    augment = Augment(scale=(1.0, 1.0), random_crop=False, flip=True)
    fidelity = Fidelity(1, 32)
    clips = {seed: read_video_clip(long_video, fidelity, augment=augment, rng=np.random.default_rng(seed))
             for seed in range(8)}
    again = read_video_clip(long_video, fidelity, augment=augment, rng=np.random.default_rng(3))
    assert (again == clips[3]).all()
    flipped = [plan_crop(64, 48, 32, augment, np.random.default_rng(s)).flip for s in range(8)]
    centre = read_video_clip(long_video, fidelity)
    for seed, clip in clips.items():
        expected = centre.flip(-1) if flipped[seed] else centre
        assert (clip == expected).all()


def _empty(path):
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: truncated_copy(write_indexed_video(d / "a.mp4", 60, 30), d / "cut.mp4", 0.5),
     "cannot open the video"),
    (lambda d: truncated_copy(write_faststart_video(d / "b.mp4", 100, 10), d / "cut2.mp4", 0.5),
     "truncated: the video data ends at"),
    (lambda d: garbage_file(d / "noise.mp4"), "cannot open the video"),
    (lambda d: write_audio_only(d / "sound.mp4"), "no video stream"),
    (lambda d: _empty(d / "empty.mp4"), "cannot open the video"),
    (lambda d: d / "absent.mp4", "not found"),
])
def test_bad_files_raise_a_decode_error_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(VideoDecodeError, match=message) as error:
        read_video_clip(path, Fidelity(2, 32))
    assert str(path) in str(error.value)


def test_truncated_file_is_caught_by_a_deep_probe_and_by_dense_reads(tmp_path):
    path = truncated_copy(write_faststart_video(tmp_path / "b.mp4", 100, 10), tmp_path / "cut.mp4", 0.6)
    assert probe_video(path).duration == pytest.approx(10.0)  # the header alone looks fine
    with pytest.raises(VideoDecodeError, match="truncated"):
        probe_video(path, deep=True)
    with pytest.raises(VideoDecodeError, match="truncated"):
        read_video_clip(path, Fidelity(20, 32))  # dense: found when the data runs out


def test_corrupt_bytes_inside_the_stream_give_a_clip_or_a_decode_error(long_video, tmp_path):
    data = bytearray(long_video.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 400] = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    try:
        clip = read_video_clip(path, Fidelity(4, 32))
    except VideoDecodeError as error:
        assert str(path) in str(error)
    else:
        assert clip.shape == (4, 8, 3, 32, 32)


# ---------------------------------------------------------------- the shared real videos


@pytest.mark.parametrize("name", sorted(REAL_VIDEOS))
def test_real_videos_probe_and_decode(name):
    path = require(SHARED_VIDEOS / name)
    frames, fps, width, height, _ = REAL_VIDEOS[name]
    info = probe_video(path)
    assert (info.width, info.height) == (width, height)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert info.frames == frames
    assert info.duration == pytest.approx(frames / fps, abs=0.1)
    for fidelity in (Fidelity(100, 32), Fidelity(3, 64)):  # dense and sparse
        clip = read_video_clip(path, fidelity)
        assert clip.shape == (fidelity.tr, 8, 3, fidelity.sr, fidelity.sr)
        assert clip.float().std() > 10  # real picture content, not a blank buffer


def test_real_video_read_with_a_seek_matches_plain_decoding():
    # bbformer_tennis26.mp4 (30.09 fps average, keyframes at frames 0, 61, 311): one
    # frame per snippet at 4 snippets needs frames near 42, 127, 211, 296; the plan
    # seeks to the keyframe at frame 61 after the first.
    import av

    path = require(SHARED_VIDEOS / "bbformer_tennis26.mp4")
    fidelity = Fidelity(4, 48, 1)
    runs = decode_plan(path, fidelity)
    assert [run.seek is not None for run in runs] == [False, True]
    clip = read_video_clip(path, fidelity)
    info = probe_video(path)
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    wanted = nearest_frames(snippet_times(info.duration, info.fps, 4, 1), [f.time for f in decoded])
    plan = plan_crop(320, 180, 48)
    for (i, k), index in np.ndenumerate(wanted):
        image = decoded[index].reformat(width=plan.width, height=plan.height, format="yuv420p") \
            .reformat(format="rgb24").to_ndarray()
        crop = image[plan.top:plan.top + 48, plan.left:plan.left + 48].transpose(2, 0, 1)
        assert np.abs(clip[i, k].numpy().astype(int) - crop.astype(int)).max() <= 2


def test_real_avi_with_unordered_pts_keeps_display_order():
    # Its decoded frames carry pts 1, 2, 4, 3, 5, 7, 6, ... (packed B-frames); times come
    # from dts there, so every frame is used once and in the decoder's (display) order.
    import av

    path = require(SHARED_VIDEOS / "mmaction2_test.avi")
    clip = read_video_clip(path, Fidelity(164, 32, 1))  # (164, 1, 3, 32, 32): every frame
    plan = plan_crop(320, 240, 32)
    with av.open(str(path)) as container:
        decoded = np.stack([
            frame.reformat(width=plan.width, height=plan.height, format="yuv420p")
            .reformat(format="rgb24").to_ndarray()[:, plan.left:plan.left + 32].transpose(2, 0, 1)
            for frame in container.decode(video=0)])  # (164, 3, 32, 32)
    ours = clip[:, 0].reshape(164, -1).float()  # (164, 3072)
    theirs = torch.from_numpy(decoded).reshape(164, -1).float()
    distance = (torch.cdist(ours, theirs, p=1) / ours.shape[1]).numpy()  # (164, 164) mean |diff|
    match = distance.argmin(axis=1)
    assert distance.min(axis=1).max() < 1.0  # each slot is one of the decoded frames
    assert (np.diff(match) >= 0).all()  # in display order
    assert len(np.unique(match)) >= 162


@pytest.mark.parametrize("sr, scale", [(34, 1.0), (32, 1.12), (40, 1.0), (36, 1.05)])
def test_repeated_reads_give_identical_clips(tmp_path, sr, scale):
    """Sizes that are not multiples of 16 once hit a non-deterministic FFmpeg converter
    (yuv420p -> gbrp): the same clip must come back bit for bit, or resumed training
    would not be exact."""
    from lofi.data.video_writer import write_video

    frames = np.random.default_rng(0).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)  # textured
    path = write_video(tmp_path / "noise.mp4", frames, 8.0)
    augment = Augment(random_crop=False, flip=False, scale=(scale, scale))
    reads = [read_video_clip(path, Fidelity(4, sr, 2), augment=augment, rng=np.random.default_rng(1), stride=2)
             for _ in range(4)]
    for clip in reads[1:]:
        assert torch.equal(clip, reads[0])
