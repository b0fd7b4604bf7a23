"""lofi.data.media (finding media safely, checking it against annotations) and the
`lofi data check` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lofi.cli import main
from lofi.data.annotations import VideoRecord, load_annotations
from lofi.data.media import check_media, find_media, write_listing
from lofi.data.media_source import MediaSource
from lofi.errors import InputFileError
from media_factory import (copy_to, garbage_file, write_frame_folder, write_indexed_video,
                           write_webm_video)
from shared_data import SHARED_VIDEOS, require


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A media folder with every naming form, a corrupt file and a frame folder."""
    root = tmp_path_factory.mktemp("videos")
    good = write_indexed_video(root / "v_alpha.mp4", 60, 30)  # 2.0 s
    copy_to(good, root / "beta.mkv")
    write_webm_video(root / "gamma.webm", 45, 30)  # 1.5 s
    garbage_file(root / "broken.mp4")
    copy_to(good, root / "v_upper.MP4")
    write_frame_folder(root / "delta", 6)
    return root


def _records(**durations):
    return [VideoRecord(video_id, "validation", duration, None, ())
            for video_id, duration in durations.items()]


def test_find_media_naming_forms(videos):
    assert find_media(videos, "alpha") == MediaSource("alpha", videos / "v_alpha.mp4", "video")
    assert find_media(videos, "beta") == MediaSource("beta", videos / "beta.mkv", "video")
    assert find_media(videos, "gamma") == MediaSource("gamma", videos / "gamma.webm", "video")
    assert find_media(videos, "upper").path.name == "v_upper.MP4"
    assert find_media(videos, "v_alpha").path == videos / "v_alpha.mp4"  # an id with its prefix
    assert find_media(videos, "delta") == MediaSource("delta", videos / "delta", "frames")
    assert find_media(videos, "nothing") is None


@pytest.mark.parametrize("video_id", ["../videos/v_alpha", "sub/alpha", "..", ""])
def test_find_media_rejects_ids_that_could_escape_the_folder(videos, video_id):
    with pytest.raises(InputFileError, match="video id"):
        find_media(videos, video_id)


def test_check_media_sorts_found_missing_unreadable_and_mismatched(videos, tmp_path):
    records = _records(alpha=2.0, beta=9.0, gamma=1.5, broken=3.0, absent=4.0)
    calls = []
    report = check_media(records, videos, progress=lambda done, total: calls.append((done, total)))
    assert sorted(report.found) == ["alpha", "beta", "gamma"]
    assert report.missing == ("absent",)
    assert [item.video_id for item in report.unreadable] == ["broken"]
    assert "broken.mp4" in report.unreadable[0].reason
    mismatches = [(m.video_id, m.annotated, round(m.measured, 1)) for m in report.mismatches]
    assert mismatches == [("beta", 9.0, 2.0)]
    assert report.total == 5
    assert calls[-1] == (5, 5) and len(calls) == 5
    listing = write_listing(report, tmp_path / "out" / "problems.tsv").read_text().splitlines()
    assert listing[0] == "status\tvideo_id\tdetail"
    assert listing[1].startswith("missing\tabsent\t")
    assert listing[2].startswith("unreadable\tbroken\t") and "broken.mp4" in listing[2]
    assert listing[3] == "duration\tbeta\tannotated 9.00s, media 2.00s"


def test_check_media_in_threads_gives_the_same_report(videos):
    records = _records(alpha=2.0, beta=9.0, broken=3.0, absent=4.0)
    one = check_media(records, videos)
    four = check_media(records, videos, workers=4)
    assert (one.found, one.missing, one.mismatches) == (four.found, four.missing, four.mismatches)
    assert [u.video_id for u in one.unreadable] == [u.video_id for u in four.unreadable]


def test_check_media_frame_folders(videos):
    records = [VideoRecord("delta", "training", 0.2, 30.0, ()),
               VideoRecord("alpha", "training", 2.0, None, ())]
    report = check_media(records, videos, frames=True)
    assert list(report.found) == ["delta"] and report.missing == ("alpha",)
    assert report.mismatches == ()  # 6 frames at 30 fps = 0.2 s


def test_check_media_needs_an_existing_folder(tmp_path):
    with pytest.raises(InputFileError, match="media folder not found"):
        check_media([], tmp_path / "nowhere")


def test_real_videos_are_all_found_and_readable(tmp_path):
    names = {"test": "mmaction2_test.mp4", "avi": "mmaction2_test.avi",
             "part0": "mmaction2_rawvideo_dataset_part_0.mp4", "tennis26": "bbformer_tennis26.mp4"}
    for video_id, name in names.items():
        copy_to(require(SHARED_VIDEOS / name), tmp_path / f"v_{video_id}{(SHARED_VIDEOS / name).suffix}")
    records = _records(test=10.0, avi=6.56, part0=1.07, tennis26=11.27)
    report = check_media(records, tmp_path, deep=True)
    assert sorted(report.found) == sorted(names)
    assert report.missing == () and report.unreadable == () and report.mismatches == ()


# ---------------------------------------------------------------- the CLI


def _annotation_file(tmp_path, durations):
    database = {video_id: {"subset": "validation", "duration": duration,
                           "annotations": [{"segment": [0.1, 0.5], "label": "Jump"}]}
                for video_id, duration in durations.items()}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"database": database}))
    return path


def test_cli_check_prints_the_summary_and_writes_the_listing(videos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    annotations = _annotation_file(tmp_path, {"alpha": 2.0, "beta": 9.0, "broken": 3.0, "absent": 4.0})
    result = CliRunner().invoke(main, ["data", "check", "--annotations", str(annotations),
                                       "--videos", str(videos)])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in result.output.splitlines() if line.count("│") >= 3}
    assert rows["annotated"] == "4" and rows["found, readable"] == "2"
    assert rows["missing"] == "1" and rows["unreadable"] == "1" and rows["duration differs"] == "1"
    listing = (tmp_path / "data_check.tsv").read_text()
    assert "missing\tabsent" in listing and "unreadable\tbroken" in listing


def test_cli_check_strict_fails_on_missing_videos(videos, tmp_path):
    annotations = _annotation_file(tmp_path, {"alpha": 2.0, "absent": 4.0})
    listing = tmp_path / "list.tsv"
    result = CliRunner().invoke(main, ["data", "check", "-a", str(annotations), "-v", str(videos),
                                       "--listing", str(listing), "--strict"])
    assert result.exit_code == 1
    assert "missing\tabsent" in listing.read_text()


def test_cli_check_clean_dataset_writes_no_listing(videos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    annotations = _annotation_file(tmp_path, {"alpha": 2.0})
    result = CliRunner().invoke(main, ["data", "check", "-a", str(annotations), "-v", str(videos),
                                       "--strict"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "data_check.tsv").exists()


def test_cli_check_bad_annotation_file_is_one_red_line(tmp_path, videos):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(main, ["data", "check", "-a", str(bad), "-v", str(videos)])
    assert result.exit_code == InputFileError.exit_code
    assert "bad.json: not valid JSON" in result.output and "Traceback" not in result.output


def test_loaded_annotations_feed_check_media(videos, tmp_path):
    annotations = load_annotations(_annotation_file(tmp_path, {"alpha": 2.0, "beta": 2.0}))
    report = check_media(annotations.records, videos)
    assert sorted(report.found) == ["alpha", "beta"] and not report.mismatches
