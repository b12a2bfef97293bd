"""Sample sheets: parsing into the `sessions:` structure, every error, the merge, and the DAG."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests import smk
from workflow_scripts.config import validate
from workflow_scripts.errors import InputError
from workflow_scripts.sample_sheet import merge_sessions, read_sample_sheet

HEADER = ["session", "camera", "video", "calibration", "frame_offset", "mask"]


def write_sheet(path: Path, rows: list[list[str]], header: list[str] = HEADER, sep: str = "\t") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sep.join(r) for r in [header] + rows) + "\n")
    return path


def touch(root: Path, *names: str) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


@pytest.fixture
def data(tmp_path):
    """Videos, calibration and masks of two sessions, relative to tmp_path (where sheets go)."""
    touch(tmp_path, "a/c1.mp4", "a/c2.mp4", "a/calib.mat", "a/m1.mp4", "a/m2.mp4",
          "b/c1.mp4", "b/c2.mp4", "b/c3.mp4", "b/calib/hires_cam1_params.mat")
    return tmp_path


def two_sessions() -> list[list[str]]:
    return [["s1", "cam1", "a/c1.mp4", "a/calib.mat", "", "a/m1.mp4"],
            ["s1", "cam2", "a/c2.mp4", "a/calib.mat", "3", "a/m2.mp4"],
            ["s2", "cam1", "b/c1.mp4", "b/calib", "", ""],
            ["s2", "cam2", "b/c2.mp4", "b/calib", "0", ""],
            ["s2", "cam3", "b/c3.mp4", "b/calib", "", ""]]


def expect_error(sheet: Path, *patterns: str) -> str:
    """The InputError names the sheet, says how to fix it and contains every pattern."""
    with pytest.raises(InputError) as e:
        read_sample_sheet(sheet)
    msg = str(e.value)
    assert str(sheet) in msg and "Fix:" in msg, msg
    for p in patterns:
        assert p in msg, f"{p!r} not in {msg}"
    return msg


# ---- parsing ----------------------------------------------------------------------------------

def test_rows_become_the_sessions_structure(data):
    got = read_sample_sheet(write_sheet(data / "sheet.tsv", two_sessions()))
    d = str(data)
    assert list(got) == ["s1", "s2"]
    assert got["s1"] == {"videos": {"cam1": f"{d}/a/c1.mp4", "cam2": f"{d}/a/c2.mp4"},
                         "calibration": f"{d}/a/calib.mat", "frame_offsets": {"cam2": 3},
                         "masks": {"cam1": f"{d}/a/m1.mp4", "cam2": f"{d}/a/m2.mp4"}}
    # no masks -> None and zero offsets dropped, exactly the config defaults
    assert got["s2"] == {"videos": {c: f"{d}/b/c{c[-1]}.mp4" for c in ("cam1", "cam2", "cam3")},
                         "calibration": f"{d}/b/calib", "frame_offsets": {}, "masks": None}


def test_same_session_from_sheet_or_config_gives_identical_rule_settings(data, monkeypatch):
    """Relative paths stay relative (to the working directory), so moving a session reruns nothing."""
    monkeypatch.chdir(data)
    write_sheet(data / "sheets" / "s.tsv", [["s1", "cam1", "../a/c1.mp4", "../a/calib.mat", "", ""],
                                            ["s1", "cam2", "../a/c2.mp4", "../a/calib.mat", "", ""]])
    from_yaml = validate({"sessions": {"s1": {"videos": {"cam1": "a/c1.mp4", "cam2": "a/c2.mp4"},
                                              "calibration": "a/calib.mat"}}})["sessions"]
    assert merge_sessions({}, "sheets/s.tsv") == from_yaml


def test_csv_bom_blank_lines_spaces_extra_columns_and_optional_columns(data):
    sheet = data / "sheet.csv"
    sheet.write_text("\ufeffsession, camera ,video,calibration,notes\n"
                     "s1,cam1, a/c1.mp4 ,a/calib.mat,first\n\n"
                     "s1,cam2,a/c2.mp4,a/calib.mat,\n", encoding="utf-8")
    got = read_sample_sheet(sheet)
    assert got["s1"]["videos"] == {"cam1": f"{data}/a/c1.mp4", "cam2": f"{data}/a/c2.mp4"}
    assert got["s1"]["frame_offsets"] == {} and got["s1"]["masks"] is None


def test_absolute_paths_are_kept(data, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    touch(other, "v.mp4", "cal.mat")
    got = read_sample_sheet(write_sheet(data / "sheet.tsv", [["s1", "cam1", str(other / "v.mp4"),
                                                              str(other / "cal.mat"), "", ""]]))
    assert got["s1"]["videos"]["cam1"] == str(other / "v.mp4") and got["s1"]["calibration"] == str(other / "cal.mat")


def test_example_sheet_in_docs_parses(repo_root, tmp_path):
    text = (repo_root / "docs" / "sample_sheet_example.tsv").read_text().replace("/data/", f"{tmp_path}/data/")
    sheet = tmp_path / "docs" / "sheet.tsv"
    sheet.parent.mkdir()
    sheet.write_text(text)
    for line in text.splitlines()[1:]:
        for cell in line.split("\t")[2:6]:
            if "/" in cell:
                touch(sheet.parent, cell)  # absolute cells: pathlib joins them as they are
    got = read_sample_sheet(sheet)
    assert set(got) == {"mouse1_day3", "mouse2_day1"}
    assert got["mouse1_day3"]["frame_offsets"] == {"cam3": 2} and len(got["mouse1_day3"]["masks"]) == 3
    assert got["mouse2_day1"]["masks"] is None and len(got["mouse2_day1"]["videos"]) == 3


# ---- errors -----------------------------------------------------------------------------------

def test_missing_sheet_and_unknown_type(data):
    expect_error(data / "nope.tsv", "does not exist")
    expect_error(write_sheet(data / "sheet.xlsx", two_sessions()), "unknown file type '.xlsx'", ".tsv")


def test_missing_columns_are_named(data):
    expect_error(write_sheet(data / "sheet.tsv", [["s1", "cam1", "a/c1.mp4"]], header=["session", "camera", "video"]),
                 "line 1", "missing column(s) ['calibration']")


def test_wrong_separator_is_suggested(data):
    expect_error(write_sheet(data / "sheet.tsv", two_sessions(), sep=","), "missing column(s)", "separated by commas")


def test_misspelt_optional_column(data):
    header = HEADER[:4] + ["frame_ofset", "mask"]
    expect_error(write_sheet(data / "sheet.tsv", two_sessions(), header=header), "'frame_ofset'", "'frame_offset'")


def test_empty_required_cells_name_their_lines(data):
    rows = two_sessions()
    rows[1][2] = ""  # line 3: no video
    rows[3][3] = ""  # line 5: no calibration
    expect_error(write_sheet(data / "sheet.tsv", rows), "line 3 (session 's1', camera 'cam2'): empty video",
                 "line 5 (session 's2', camera 'cam2'): empty calibration")


@pytest.mark.parametrize("offset", ["1.5", "-1", "two"])
def test_offset_must_be_a_whole_number(data, offset):
    rows = two_sessions()
    rows[4][4] = offset
    expect_error(write_sheet(data / "sheet.tsv", rows), "line 6", f"frame_offset '{offset}' is not a whole number")


def test_names_must_fit_the_wildcards(data):
    rows = two_sessions()
    rows[0][0] = "s 1"
    expect_error(write_sheet(data / "sheet.tsv", rows), "line 2", "session name 's 1' may only use")


def test_missing_files_are_named_with_the_resolved_path(data):
    rows = two_sessions()
    rows[2][2] = "b/missing.mp4"
    expect_error(write_sheet(data / "sub" / "sheet.tsv", rows[2:]), "line 2", f"not found at {data}/sub/b/missing.mp4",
                 "relative to the sheet's folder")


def test_duplicate_camera_names_both_lines(data):
    rows = two_sessions() + [["s2", "cam1", "b/c2.mp4", "b/calib", "", ""]]
    expect_error(write_sheet(data / "sheet.tsv", rows), "line 7: session 's2', camera 'cam1' is already on line 4")


def test_calibration_must_agree_within_a_session(data):
    rows = two_sessions()
    rows[4][3] = "a/calib.mat"
    expect_error(write_sheet(data / "sheet.tsv", rows), "session 's2': different calibration values",
                 "(line 4)", "(line 6)")


def test_masks_on_some_cameras_only_is_an_error(data):
    rows = two_sessions()
    rows[1][5] = ""
    msg = expect_error(write_sheet(data / "sheet.tsv", rows), "session 's1': mask given on some cameras only",
                       "line(s) 3", "sessions:")
    assert "s2" not in msg  # a session without any masks is fine


def test_sheet_without_rows(data):
    expect_error(write_sheet(data / "sheet.tsv", []), "no rows")


def test_several_problems_are_reported_together(data):
    rows = two_sessions()
    rows[0][2], rows[2][4] = "", "x"
    expect_error(write_sheet(data / "sheet.tsv", rows), "line 2", "line 4")


# ---- merge with config sessions ---------------------------------------------------------------

def test_sheet_sessions_follow_config_sessions(data):
    sheet = write_sheet(data / "sheet.tsv", two_sessions())
    config_sessions = {"s0": {"videos": {"cam1": "x.mp4"}, "calibration": "c", "frame_offsets": {}, "masks": None}}
    merged = merge_sessions(config_sessions, sheet)
    assert list(merged) == ["s0", "s1", "s2"] and merged["s0"] == config_sessions["s0"]
    assert merge_sessions(config_sessions, None) == config_sessions


def test_session_in_config_and_sheet_is_an_error(data):
    sheet = write_sheet(data / "sheet.tsv", two_sessions())
    with pytest.raises(InputError, match=r"sheet\.tsv:\n  line 4: session 's2' is also listed under `sessions:`.*\nFix:"):
        merge_sessions({"s2": {"videos": {}, "calibration": "c"}}, sheet)


# ---- the workflow -----------------------------------------------------------------------------

@pytest.fixture
def workdir(data, repo_root, monkeypatch, mammal_dir):
    shutil.copy(repo_root / "config.yaml", data / "config.yaml")
    monkeypatch.setenv("MAMMAL_MOUSE_DIR", str(mammal_dir))
    return data


def test_dry_run_has_jobs_per_session_of_the_sheet(repo_root, workdir):
    write_sheet(workdir / "sheet.tsv", two_sessions())
    rules = smk.run(repo_root, ["train_mouse"], workdir=workdir, config={"sample_sheet": "sheet.tsv"})
    for rule in ("check_sync", "calibration", "locate_mouse", "crop_shards"):
        assert rules.count(rule) == 2, (rule, rules)
    assert rules.count("masks") == 5  # 2 + 3 cameras
    assert "demo_recording" not in rules


def test_bad_sheet_stops_the_dry_run(repo_root, workdir):
    rows = two_sessions()
    rows[1][3] = "b/calib"
    write_sheet(workdir / "sheet.tsv", rows)
    with pytest.raises(Exception, match=r"session 's1': different calibration values"):
        smk.run(repo_root, ["train_mouse"], workdir=workdir, config={"sample_sheet": "sheet.tsv"})


def test_editing_one_row_reruns_only_its_session(repo_root, workdir):
    """check_sync runs for real on tiny videos; then only the edited session is out of date."""
    from workflow_scripts.video import write_video

    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(4)]
    for v in ("a/c1.mp4", "a/c2.mp4", "b/c1.mp4", "b/c2.mp4", "b/c3.mp4"):
        write_video(workdir / v, frames, fps=10)
    rows = two_sessions()
    rows[1][4] = ""  # equal lengths, no offsets: in sync
    sheet = write_sheet(workdir / "sheet.tsv", rows)
    cfg = {"sample_sheet": "sheet.tsv"}
    targets = ["results/frames/s1/sync.json", "results/frames/s2/sync.json"]
    assert smk.run(repo_root, targets, workdir=workdir, config=cfg, dryrun=False) == ["check_sync"] * 2

    os.utime(write_sheet(sheet, rows))  # rewritten, same content: the sheet is no input
    assert smk.run(repo_root, targets, workdir=workdir, config=cfg) == []

    rows[3][4] = "1"  # s2 cam2 offset
    write_sheet(sheet, rows)
    assert smk.run(repo_root, targets[:1], workdir=workdir, config=cfg) == []
    assert smk.run(repo_root, targets[1:], workdir=workdir, config=cfg) == ["check_sync"]
