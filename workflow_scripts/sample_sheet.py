"""Sessions from a sample sheet: one row per (session, camera), TSV or CSV.

Columns (header row required, order free, other columns such as ``notes`` are ignored):

| column | required | meaning |
|---|---|---|
| ``session`` | yes | session name (letters, digits, ``_ . -``) |
| ``camera`` | yes | camera name, unique within its session |
| ``video`` | yes | video file of that camera |
| ``calibration`` | yes | calibration file or folder; the same value on every row of a session |
| ``frame_offset`` | no | frames to skip at the start of this video (whole number >= 0, empty = 0) |
| ``mask`` | no | external mask video or image folder; all cameras of a session or none |

Relative paths are relative to the sheet's folder (kept relative when the sheet's path is, so
moving the working directory reruns nothing). The result has exactly the structure of config
``sessions:`` (see ``workflow_scripts/schemas/config.schema.yaml``), so rules read both the same
way and every value reaches them through ``params``/``input`` as before.

Masks on only some cameras of a session are an error here (in config ``sessions:`` the missing
cameras fall back to built-in masks): in a spreadsheet an empty cell is far more often a
forgotten path than a wish to mix two kinds of masks, and mixing silently changes the data.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workflow_scripts.errors import InputError

REQUIRED = ("session", "camera", "video", "calibration")
OPTIONAL = ("frame_offset", "mask")
# Same pattern as the {session} and {camera} wildcard constraints in rules/common.smk.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
SEPARATORS = {".tsv": "\t", ".tab": "\t", ".txt": "\t", ".csv": ","}
MAX_LISTED = 10  # problems listed per error; a sheet with the wrong layout would list every row


@dataclass(frozen=True)
class Row:
    """One camera of one session; ``line`` is the 1-based line in the sheet (header = line 1)."""

    line: int
    session: str
    camera: str
    video: str
    calibration: str
    frame_offset: int
    mask: str | None


def _fail(path: Path, problems: list[str], fix: str) -> None:
    listed = problems[:MAX_LISTED] + ([f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else [])
    raise InputError(f"sample sheet {path}:\n  " + "\n  ".join(listed) + f"\nFix: {fix}")


def _read_table(path: Path) -> pd.DataFrame:
    """All cells as stripped strings ("" when empty); row i of the frame is line i + 2."""
    if not path.is_file():
        raise InputError(f"sample sheet {path} does not exist (relative paths are relative to the working "
                         f"directory {os.getcwd()}). Fix: correct `sample_sheet` in the config.")
    sep = SEPARATORS.get(path.suffix.lower())
    if sep is None:
        raise InputError(f"sample sheet {path}: unknown file type '{path.suffix}'. "
                         f"Fix: name it .tsv (tab-separated) or .csv (comma-separated).")
    try:
        # dtype=str + keep_default_na=False: "NA" or "007" stay what the user wrote;
        # utf-8-sig drops the byte-order mark spreadsheet programs put before the header.
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False,
                         encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        kind = "tab" if sep == "\t" else "comma"
        raise InputError(f"sample sheet {path} cannot be read: {e}. Fix: save it as UTF-8 "
                         f"{kind}-separated text with a header row.") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df.fillna("").apply(lambda col: col.str.strip())


def _check_columns(path: Path, df: pd.DataFrame) -> None:
    found = list(df.columns)
    missing = [c for c in REQUIRED if c not in found]
    if missing:
        sep = SEPARATORS[path.suffix.lower()]
        others = {"\t": "tabs", ",": "commas", ";": "semicolons"}
        wrong = [name for s, name in others.items() if s != sep and len(found) == 1 and s in found[0]]
        hint = f" (one column only: the file looks separated by {wrong[0]}, not {others[sep]})" if wrong else ""
        _fail(path, [f"line 1 (header): missing column(s) {missing}; found {found}{hint}"],
              f"add a header row with the columns {list(REQUIRED)} (optional: {list(OPTIONAL)}).")
    typos = [(c, difflib.get_close_matches(c, REQUIRED + OPTIONAL, n=1, cutoff=0.8))
             for c in found if c not in REQUIRED + OPTIONAL]
    typos = [(c, m[0]) for c, m in typos if m]
    if typos:
        _fail(path, [f"line 1 (header): column '{c}' looks like a misspelt '{m}'" for c, m in typos],
              "rename the column (other extra columns, e.g. notes, are ignored).")


def _resolve(base: Path, value: str) -> str:
    """A path cell relative to the sheet's folder (absolute paths unchanged), normalized."""
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(base, value))


def _parse_rows(path: Path, df: pd.DataFrame) -> list[Row]:
    """Rows with resolved paths; every cell-level problem is collected, then raised at once."""
    base = path.parent
    rows, problems = [], []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        if not any(rec.values()):
            continue  # blank line
        where = f"line {line} (session '{rec['session']}', camera '{rec['camera']}')"
        empty = [c for c in REQUIRED if not rec[c]]
        if empty:
            problems.append(f"{where}: empty {', '.join(empty)}")
            continue
        for c in ("session", "camera"):
            if not NAME_RE.fullmatch(rec[c]):
                problems.append(f"{where}: {c} name '{rec[c]}' may only use letters, digits, '_', '.' and '-'")
        offset_text = rec.get("frame_offset", "")
        offset_ok = re.fullmatch(r"[0-9]*", offset_text) is not None  # empty = 0
        if not offset_ok:
            problems.append(f"{where}: frame_offset '{offset_text}' is not a whole number >= 0")
        mask = _resolve(base, rec["mask"]) if rec.get("mask") else None
        row = Row(line, rec["session"], rec["camera"], _resolve(base, rec["video"]),
                  _resolve(base, rec["calibration"]), int(offset_text) if offset_ok and offset_text else 0, mask)
        for column, p in (("video", row.video), ("calibration", row.calibration), ("mask", row.mask)):
            if p is not None and not os.path.exists(p):
                problems.append(f"{where}: {column} '{rec[column]}' not found at {p}"
                                + (" (relative paths are relative to the sheet's folder)"
                                   if not os.path.isabs(rec[column]) else ""))
        rows.append(row)  # only used when no row had a problem
    if problems:
        _fail(path, problems, "fill in or correct the cells named above (paths relative to the sheet's folder "
                              "or absolute; frame_offset a whole number or empty).")
    if not rows:
        _fail(path, ["no rows below the header"], "add one row per (session, camera), or set sample_sheet: null.")
    return rows


def _check_sessions(path: Path, rows: list[Row]) -> None:
    """Problems between rows: duplicates, calibration per session, masks for all cameras or none."""
    problems = []
    seen: dict[tuple[str, str], int] = {}
    by_session: dict[str, list[Row]] = {}
    for r in rows:
        key = (r.session, r.camera)
        if key in seen:
            problems.append(f"line {r.line}: session '{r.session}', camera '{r.camera}' is already on line {seen[key]}")
        seen.setdefault(key, r.line)
        by_session.setdefault(r.session, []).append(r)
    for session, srows in by_session.items():
        calibrations = {r.calibration: r.line for r in reversed(srows)}  # value -> first line
        if len(calibrations) > 1:
            listing = ", ".join(f"'{c}' (line {ln})" for c, ln in sorted(calibrations.items(), key=lambda x: x[1]))
            problems.append(f"session '{session}': different calibration values {listing}; "
                            "one calibration covers all cameras of a session")
        without = [r.line for r in srows if r.mask is None]
        if without and len(without) < len(srows):
            problems.append(f"session '{session}': mask given on some cameras only; empty on line(s) "
                            f"{', '.join(map(str, without))}")
    if problems:
        _fail(path, problems, "keep one row per (session, camera), the same calibration on every row of a session, "
                              "and a mask for every camera of a session or for none (built-in masks). To mix "
                              "external and built-in masks in one session, list it under `sessions:` in the config.")


def _to_sessions(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Rows -> the structure of config ``sessions:`` (cameras in row order = view order in the shards).

    Only non-zero offsets are kept and ``masks`` is None without masks, exactly as the config's
    defaults, so a session moved between the config and a sheet keeps identical rule params
    (and nothing reruns).
    """
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r.session, {"videos": {}, "calibration": r.calibration, "frame_offsets": {}, "masks": None})
        s["videos"][r.camera] = r.video
        if r.frame_offset:
            s["frame_offsets"][r.camera] = r.frame_offset
        if r.mask is not None:
            s["masks"] = {**(s["masks"] or {}), r.camera: r.mask}
    return out


def read_rows(path: str | Path) -> list[Row]:
    """Read and validate a sample sheet; raise InputError naming the file, line(s) and fix."""
    path = Path(path)
    df = _read_table(path)
    _check_columns(path, df)
    rows = _parse_rows(path, df)
    _check_sessions(path, rows)
    return rows


def read_sample_sheet(path: str | Path) -> dict[str, dict[str, Any]]:
    """Session name -> {videos, calibration, frame_offsets, masks}, as config ``sessions:``."""
    return _to_sessions(read_rows(path))


def merge_sessions(config_sessions: dict[str, Any], sample_sheet: str | Path | None) -> dict[str, dict[str, Any]]:
    """Config ``sessions:`` followed by the sheet's sessions; a name in both is an InputError."""
    if not sample_sheet:
        return dict(config_sessions)
    rows = read_rows(sample_sheet)
    clash = {}
    for r in rows:
        if r.session in config_sessions:
            clash.setdefault(r.session, r.line)
    if clash:
        _fail(Path(sample_sheet), [f"line {ln}: session '{s}' is also listed under `sessions:` in the config"
                                   for s, ln in clash.items()],
              "list each session in one place only: rename it or remove it from the sheet or from `sessions:`.")
    return {**config_sessions, **_to_sessions(rows)}
