"""lofi.data.synth and `lofi data synth`: real files, decoded back with PyAV."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace

import av
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from lofi.cli import main
from lofi.cli.data_synth_cmd import DEFAULTS
from lofi.data.annotations import load_annotations
from lofi.data.synth import (
    SynthConfig,
    SynthPaths,
    action_mask,
    class_name,
    classification_document,
    describe,
    ensure_synthetic,
    generate,
    plan_dataset,
    read_manifest,
    video_rng,
)
from lofi.data.synth.layout import MIN_INSTANCE_SECONDS, sample_segments
from lofi.data.synth.scenes import class_heading, plan_scene, render
from lofi.errors import OptionError

SMALL = SynthConfig(videos=6, classes=3, seed=3, size=32, fps=8, min_duration=4, max_duration=8)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "data", SMALL)


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def test_videos_decode_to_the_declared_frames_and_size(small):
    database = json.loads(small.annotations.read_text())["database"]
    assert sorted(p.name for p in small.videos_dir.iterdir()) == sorted(f"{v}.mp4" for v in database)
    for video_id, entry in database.items():
        frames = _decode(small.videos_dir / f"{video_id}.mp4")
        assert frames.shape == (round(entry["duration"] * SMALL.fps), 32, 32, 3)
        assert entry["resolution"] == "32x32"
        assert frames.std() > 10  # a picture, not a blank


def test_annotations_are_activitynet_and_consistent(small):
    document = json.loads(small.annotations.read_text())
    assert document["version"] == "VERSION 1.3"
    names = list(SMALL.class_names())
    assert [node["nodeName"] for node in document["taxonomy"][1:]] == names
    database = document["database"]
    assert len(database) == SMALL.videos
    assert {entry["subset"] for entry in database.values()} == {"training", "validation"}
    for video_id, entry in database.items():
        assert set(entry) == {"subset", "duration", "resolution", "url", "annotations"}
        assert 4 <= entry["duration"] <= 8 and isinstance(entry["duration"], float)
        segments = [item["segment"] for item in entry["annotations"]]
        assert 1 <= len(segments) <= SMALL.max_instances
        assert len({item["label"] for item in entry["annotations"]}) == 1  # one class per video
        assert all(item["label"] in names for item in entry["annotations"])
        ends = [0.0] + [x for segment in segments for x in segment] + [entry["duration"]]
        assert ends == sorted(ends), f"{video_id}: segments overlap or leave the video"
        assert all(b - a >= MIN_INSTANCE_SECONDS for a, b in segments)
        # Segment bounds are frame boundaries.
        assert all(abs(x * SMALL.fps - round(x * SMALL.fps)) < 1e-6 for seg in segments for x in seg)
    # The project's own loader accepts the file as it is.
    loaded = load_annotations(small.annotations)
    assert (loaded.clipped, loaded.dropped, len(loaded.records)) == (0, 0, SMALL.videos)


def test_classification_scores_cover_every_video(small):
    document = json.loads(small.classification.read_text())
    assert document["class"] == list(SMALL.class_names())
    database = json.loads(small.annotations.read_text())["database"]
    assert set(document["results"]) == set(database)
    for scores in document["results"].values():
        assert len(scores) == SMALL.classes
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)


def test_classification_top1_is_right_most_of_the_time_but_not_always():
    config = SynthConfig(videos=600)
    videos = plan_dataset(config)
    results = classification_document(videos, config)["results"]
    correct = [int(np.argmax(results[v.video_id])) == v.class_index for v in videos]
    assert 0.75 < np.mean(correct) < 0.97


def test_same_seed_same_files_other_seed_other_data(small, tmp_path):
    again = generate(tmp_path / "again", SMALL)
    for name in ("annotations.json", "classification.json", "manifest.json"):
        assert (again.root / name).read_bytes() == (small.root / name).read_bytes()
    for video in small.videos_dir.iterdir():
        assert (again.videos_dir / video.name).read_bytes() == video.read_bytes()
    other = plan_dataset(replace(SMALL, seed=4))
    assert [v.segments for v in other] != [v.segments for v in plan_dataset(SMALL)]


def test_the_actor_glides_along_its_class_heading_only_inside_actions():
    config = SynthConfig(videos=4, classes=4, fps=8)
    for video in plan_dataset(config):
        mask = action_mask(video)
        scene = plan_scene(video_rng(config, video.index, "scene"), video.frames, config.fps,
                           mask, video.class_index, config.classes)
        step = np.diff(scene.tokens[scene.actor].xy.astype(np.float64), axis=0)
        step = (step + 0.5) % 1.0 - 0.5  # (N-1, 2) unwrapped on the torus
        heading = np.arctan2(-step[:, 1], step[:, 0])  # screen y points down
        inside = mask[:-1] & mask[1:]

        def off(target):  # angular distance to `target`, degrees
            return np.degrees(np.abs((heading - target + np.pi) % (2 * np.pi) - np.pi))

        assert (off(class_heading(video.class_index, config.classes))[inside] < 15).all()
        near_any_class = np.min([off(class_heading(c, 4)) for c in range(4)], axis=0)
        assert np.mean(near_any_class[~inside] < 15) < 0.2  # look-alikes go another way
        speed = np.linalg.norm(step, axis=1)
        assert speed[inside].mean() == pytest.approx(speed[~inside].mean(), rel=0.05)


def test_render_shape_and_determinism():
    config = SynthConfig(videos=2, size=24)
    video = plan_dataset(config)[0]

    def frames():
        scene = plan_scene(video_rng(config, 0, "scene"), video.frames, config.fps,
                           action_mask(video), video.class_index, config.classes)
        return render(scene, config.size)

    first = frames()
    assert first.shape == (video.frames, 24, 24, 3) and first.dtype == np.uint8
    assert np.array_equal(first, frames())


@settings(max_examples=60, deadline=None)
@given(frames=st.integers(32, 2000), fps=st.sampled_from([4.0, 8.0, 12.5, 30.0]),
       max_instances=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_segments_are_disjoint_long_enough_and_inside(frames, fps, max_instances, seed):
    segments = sample_segments(np.random.default_rng(seed), frames, fps, max_instances)
    assert 1 <= len(segments) <= max_instances
    min_len = max(2, round(MIN_INSTANCE_SECONDS * fps))
    for a, b in segments:
        assert 0 <= a and b <= frames and b - a >= min(min_len, frames)
    for (_, end), (start, _) in zip(segments, segments[1:]):
        assert start - end >= max(1, round(fps))


def test_plan_balances_classes_and_splits_every_class():
    videos = plan_dataset(SynthConfig())
    assert len({v.video_id for v in videos}) == 120 and videos[0].video_id == "synth_0001"
    counts = np.bincount([v.class_index for v in videos])
    assert counts.tolist() == [30, 30, 30, 30]
    validation = [v.class_index for v in videos if v.subset == "validation"]
    assert len(validation) == 30 and sorted(set(validation)) == [0, 1, 2, 3]


def test_class_names_are_compass_directions():
    assert [class_name(i, 4) for i in range(4)] == [
        "slide_right", "slide_up_right", "slide_up", "slide_up_left"]
    assert [class_name(i, 3) for i in range(3)] == ["slide_right", "slide_060deg", "slide_120deg"]


@pytest.mark.parametrize(("field", "value"), [
    ("videos", 0), ("videos", 1), ("classes", 7), ("size", 8), ("size", 33),
    ("fps", 0), ("train_fraction", 1.0), ("max_duration", 2.0), ("max_instances", 0),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(OptionError, match=f"{field}={value!r}"):
        replace(SynthConfig(), **{field: value}).validate()


@pytest.mark.parametrize(("field", "value"), [("videos", 2.5), ("size", True), ("fps", "8")])
def test_config_types_are_checked(field, value):
    with pytest.raises(OptionError, match=f"{field}={value!r} must be"):
        replace(SynthConfig(), **{field: value}).validate()


def test_ensure_synthetic_generates_once(tmp_path):
    config = replace(SMALL, videos=2)
    first = ensure_synthetic(tmp_path, config)
    stamp = first.manifest.stat().st_mtime_ns
    second = ensure_synthetic(tmp_path, config)
    assert second == first and first.manifest.stat().st_mtime_ns == stamp
    assert read_manifest(first.root)["config"]["videos"] == 2
    assert [p.name for p in tmp_path.iterdir()] == [first.root.name]  # no temporary left
    other = ensure_synthetic(tmp_path, replace(config, seed=9))
    assert other.root != first.root


def test_cli_writes_a_dataset_and_summarises_it(tmp_path):
    out = tmp_path / "synth"
    args = ["data", "synth", "--out", str(out), "--videos", "3", "--classes", "2", "--size", "32",
            "--min-duration", "4", "--max-duration", "6"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "slide_right, slide_up" in result.output
    summary = describe(SynthPaths.under(out))
    assert summary.videos == 3 and summary.training + summary.validation == 3
    # A second run into the same folder needs --force; with it, the folder is rewritten.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--force" in again.output
    forced = CliRunner().invoke(main, [*args[:5], "2", *args[6:], "--force"])
    assert forced.exit_code == 0, forced.output
    assert len(list((out / "videos").iterdir())) == 2


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--videos", "0", "videos=0"), ("--size", "8", "size=8"), ("--size", "33", "size=33"),
    ("--classes", "9", "classes=9"), ("--fps", "0", "fps=0"),
])
def test_cli_rejects_bad_options_with_one_clear_line(tmp_path, option, value, message):
    result = CliRunner().invoke(main, ["data", "synth", "--out", str(tmp_path / "x"), option, value])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_cli_defaults_match_the_config():
    assert DEFAULTS == {f.name: getattr(SynthConfig(), f.name) for f in fields(SynthConfig)
                        if f.name in DEFAULTS}
    assert math.isclose(DEFAULTS["fps"], 8.0)
