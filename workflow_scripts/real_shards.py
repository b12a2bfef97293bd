"""The ``crop_shards`` step (real recordings -> HDF5 shards) and the FaceLift folder exporter.

Inputs per session (docs/conventions.md):
  masks HDF5 per camera (workflow_scripts/masks.py): ``masks`` uint8 [T, H, W] (255 / 0),
      ``frames`` uint8 [T, H, W, 3] stored in ``stored_box`` [T, 4] only (whole frames when its
      attr ``store_frames`` is "full"), ``frame_index`` int64 [T]
  cameras JSON (canonical, R, t world-to-camera, raw world)
  centres CSV: ``frame_index, x, y, z, valid, reason, ...`` (smoothed raw-world mouse centre)
  normalization JSON: ``{"R_up": 3x3, "scale": s, ...}``; per frame
      ``norm_from_raw = [[s R_up, -s R_up c], [0, 1]]`` with c the frame's centre, so the
      mouse centre is the normalized origin (``X_norm = s R_up (X_raw - c)``).

Output: one shard (schema v1, docs/shard_schema.md, kind ``real``) per (session, chunk) with
``K`` [N, V, 3, 3], ``c2w`` [N, V, 4, 4] (OpenCV camera-to-world, normalized world) and the QC
extras ``qc/size_ratio``, ``qc/center_offset_px``, ``qc/focal`` [N, V] (float32) and
``qc/touches_crop_border`` [N, V] (bool).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from workflow_scripts.atomic import write_json
from workflow_scripts.cameras import Camera, cameras_from_json
from workflow_scripts.crop import CropParams, CropResult, crop_view, prepare_camera
from workflow_scripts.errors import InputError
from workflow_scripts.h5chunks import (StoredChunk, lzf_constant, lzf_decompress_into, lzf_join, lzf_stream,
                                       lzf_threads_available)
from workflow_scripts.locate import Normalization
from workflow_scripts.locate import norm_from_raw as _locate_norm_from_raw
from workflow_scripts.shards import _COMMON, ShardWriter, open_shard, read_sample
from workflow_scripts.workers import ForkedWorkers

log = logging.getLogger(__name__)

CENTER_COLUMNS = ("frame_index", "x", "y", "z", "valid")


# --- readers ------------------------------------------------------------------------------
def read_cameras_json(path: str | os.PathLike) -> list[Camera]:
    """Canonical cameras JSON -> validated cameras (raw world, R, t world-to-camera)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: cameras JSON not found. Fix: run the calibration rule first.")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e}). Fix: delete it and rerun the calibration rule.") from e
    return [c.validate(str(p)) for c in cameras_from_json(d)]


def read_centers(path: str | os.PathLike) -> pd.DataFrame:
    """Centres CSV -> DataFrame with int64 ``frame_index``, float ``x, y, z``, bool ``valid``,
    sorted by frame_index."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: centres CSV not found. Fix: run the locate rule first.")
    df = pd.read_csv(p)
    missing = [c for c in CENTER_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{p}: missing columns {missing} (has {list(df.columns)}). Fix: rerun the locate rule.")
    valid = df["valid"]
    if valid.dtype == object:  # "True"/"False" strings
        valid = valid.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])
    df = df.assign(frame_index=df["frame_index"].astype(np.int64), valid=valid.astype(bool))
    if df["frame_index"].duplicated().any():
        raise InputError(f"{p}: duplicate frame_index values. Fix: rerun the locate rule.")
    bad = df["valid"] & ~np.isfinite(df[["x", "y", "z"]].to_numpy(float)).all(1)
    if bad.any():
        raise InputError(f"{p}: frames {df.loc[bad, 'frame_index'].tolist()[:5]} are valid but have non-finite "
                         "x, y, z. Fix: rerun the locate rule.")
    return df.sort_values("frame_index").reset_index(drop=True)


def read_normalization(path: str | os.PathLike) -> Normalization:
    """Normalization JSON (``R_up`` [3, 3] rotation, ``scale`` > 0, optional ``up_raw`` [3])."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: normalization JSON not found. Fix: run the locate rule first.")
    try:
        d = json.loads(p.read_text())
        R = np.asarray(d["R_up"], dtype=np.float64)
        s = float(d["scale"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{p}: needs 'R_up' (3x3) and 'scale' (number): {e}. Fix: rerun the locate rule.") from e
    if R.shape != (3, 3) or np.abs(R @ R.T - np.eye(3)).max() > 1e-6 or np.linalg.det(R) < 0 or not s > 0:
        raise InputError(f"{p}: R_up must be a 3x3 rotation and scale > 0. Fix: rerun the locate rule.")
    # up_raw is implied by R_up (R_up @ up_raw = e_z); older files may lack it.
    return Normalization(R_up=R, scale=s, up_raw=np.asarray(d.get("up_raw", R[2]), dtype=np.float64))


def norm_from_raw(normalization: Normalization | dict[str, Any], center_raw: np.ndarray) -> np.ndarray:
    """[4, 4] similarity ``X_norm = s R_up (X_raw - c)`` for this frame's centre ``c`` [3]
    (``workflow_scripts.locate.norm_from_raw``, which owns the normalization)."""
    if isinstance(normalization, dict):
        d = normalization
        R = np.asarray(d["R_up"], dtype=np.float64)
        normalization = Normalization(R_up=R, scale=float(d["scale"]), up_raw=np.asarray(d.get("up_raw", R[2]), dtype=np.float64))
    return _locate_norm_from_raw(normalization, np.asarray(center_raw, dtype=np.float64))


def open_per_camera(files: dict[str, str], cameras: list[Camera], dataset: str, what: str) -> dict[str, h5py.File]:
    """Open one HDF5 per camera (in ``cameras`` order), checking presence, datasets and that
    ``dataset`` [T, H, W, ...] has each camera's image size. The caller closes the files."""
    names = [c.name for c in cameras]
    missing = [n for n in names if n not in files]
    if missing:
        raise InputError(f"{what}: no file given for cameras {missing} (cameras JSON has {names}). "
                         "Fix: check the session's camera names in the config.")
    out: dict[str, h5py.File] = {}
    try:
        for cam in cameras:
            p = Path(files[cam.name])
            if not p.exists():
                raise InputError(f"{p}: {what} file of camera {cam.name!r} not found. Fix: run the rule that makes it.")
            f = out[cam.name] = h5py.File(p, "r")
            if dataset not in f or "frame_index" not in f:
                raise InputError(f"{p}: lacks '{dataset}'/'frame_index'. Fix: delete it and rerun the rule that makes it.")
            if tuple(f[dataset].shape[1:3]) != (cam.height, cam.width):
                raise InputError(f"{p}: {what} {tuple(f[dataset].shape[1:3])} do not match camera {cam.name!r} size "
                                 f"{cam.height}x{cam.width}. Fix: check the calibration.")
    except BaseException:
        for f in out.values():
            f.close()
        raise
    return out


def chunk_frames(frame_indices: np.ndarray, chunk: int, num_chunks: int) -> np.ndarray:
    """Contiguous part ``chunk`` (0-based) of ``num_chunks`` of the sorted valid frame indices."""
    if not (0 <= chunk < num_chunks):
        raise InputError(f"chunk {chunk} is outside 0..{num_chunks - 1}. Fix: crop.num_chunks in the config.")
    return np.array_split(np.asarray(frame_indices, dtype=np.int64), num_chunks)[chunk]


class PartReader:
    """Reads the stored part ``frames[row, y0:y1, x0:x1]`` / ``masks[row, y0:y1, x0:x1]`` of one
    camera's masks file, safe to call from several threads.

    Where the layout allows (uncompressed or LZF tiles of one frame each, no other filters, the
    part aligned to the tiles, as workflow_scripts/masks.py writes them), the tiles are read with
    ``read_direct_chunk`` and LZF-decoded here, which releases the GIL (so threads read in
    parallel, and HDF5's own filter pipeline, which holds h5py's lock, is skipped); otherwise,
    or when a tile cannot be read so, through h5py.
    """

    def __init__(self, f: h5py.File) -> None:
        self.frames, self.masks = f["frames"], f["masks"]
        self.tile = self._tile()

    def _tile(self) -> tuple[int, int] | None:
        fr, ms = self.frames, self.masks
        ok = (fr.chunks is not None and ms.chunks is not None and len(fr.chunks) == 4 and len(ms.chunks) == 3
              and fr.chunks[0] == ms.chunks[0] == 1 and fr.chunks[1:3] == ms.chunks[1:] and fr.chunks[3] == fr.shape[3]
              and fr.dtype == ms.dtype == np.uint8)
        for ds in (fr, ms):
            ok = ok and ds.compression in (None, "lzf") and not ds.shuffle and not ds.fletcher32 and ds.scaleoffset is None
        return tuple(ms.chunks[1:]) if ok else None

    def read(self, row: int, box: tuple[int, int, int, int], stored: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(image [h, w, 3], mask [h, w]) of the part (x0, y0, x1, y1) of frame ``row``;
        ``stored``: all its tiles were written (else h5py reads, giving the fill value)."""
        x0, y0, x1, y1 = box
        if stored and self.tile is not None and x0 % self.tile[1] == 0 and y0 % self.tile[0] == 0:
            try:
                return self._read_tiles(row, box)
            except (KeyError, OSError, ValueError, RuntimeError, MemoryError):
                # h5py raises MemoryError for a tile that was never written
                pass
        return self.frames[row, y0:y1, x0:x1], self.masks[row, y0:y1, x0:x1]

    def _read_tiles(self, row: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = box
        th, tw = self.tile
        C = self.frames.shape[3]
        image = np.empty((y1 - y0, x1 - x0, C), np.uint8)
        mask = np.empty((y1 - y0, x1 - x0), np.uint8)
        for ds, out, shape in ((self.frames, image, (th, tw, C)), (self.masks, mask, (th, tw))):
            lzf = ds.compression == "lzf"
            for ty in range(y0, y1, th):
                for tx in range(x0, x1, tw):
                    fmask, data = ds.id.read_direct_chunk((row, ty, tx) + (0,) * (len(shape) - 2))
                    if lzf and not fmask & 1:
                        tile = np.empty(shape, np.uint8)
                        if not lzf_decompress_into(data, tile):
                            raise RuntimeError("LZF tile does not decode")
                    else:
                        tile = np.frombuffer(data, np.uint8).reshape(shape)
                    h, w = min(th, y1 - ty), min(tw, x1 - tx)
                    out[ty - y0:ty - y0 + h, tx - x0:tx - x0 + w] = tile[:h, :w]
        return image, mask


def _view_streams(r: CropResult, background: int) -> tuple[list, list]:
    """LZF pieces of one view's image and mask, in the order of the sample's chunk: the rows
    outside ``r.box`` are plain background (image) and 0 (mask) and are encoded as constant runs
    without compressing them; the rows between are compressed (h5chunks.lzf_join joins them)."""
    if r.box is None:
        return [lzf_stream(r.image)], [lzf_stream(r.mask)]
    S = r.mask.shape[0]
    _, y0, _, y1 = r.box
    row3 = r.image.shape[1] * r.image.shape[2]
    return ([lzf_constant(background, y0 * row3), lzf_stream(r.image[y0:y1]), lzf_constant(background, (S - y1) * row3)],
            [lzf_constant(0, y0 * S), lzf_stream(r.mask[y0:y1]), lzf_constant(0, (S - y1) * S)])


class _Cropper:
    """Reads, crops and LZF-compresses the V views of a frame (:meth:`frame`); made in the
    parent, used there (``workers`` = 1) or in forked worker processes, each of which opens the
    masks files itself (:meth:`open`; HDF5 handles must not cross a fork)."""

    def __init__(self, masks_h5: dict[str, str], cameras: list[Camera], boxes: dict[str, np.ndarray], cp: CropParams,
                 row_of: dict[int, int], centre_of: dict[int, np.ndarray], normalization: Normalization) -> None:
        self.masks_h5, self.cameras, self.boxes, self.cp = masks_h5, cameras, boxes, cp
        self.names = [c.name for c in cameras]
        self.row_of, self.centre_of, self.normalization = row_of, centre_of, normalization
        self.preps = [prepare_camera(c) for c in cameras]
        self.compress = lzf_threads_available()
        self.bg_value = 0 if cp.background == "black" else 255
        self.readers: list[PartReader] = []

    def open(self, stack: contextlib.ExitStack, mf: dict[str, h5py.File] | None = None) -> None:
        if mf is None:
            mf = open_per_camera(self.masks_h5, self.cameras, "masks", "masks")
            for f in mf.values():
                stack.callback(f.close)
        self.readers = [PartReader(mf[n]) for n in self.names]

    def frame(self, fidx: int) -> tuple:
        """(N, images, masks, K, c2w, valid, qc [3, V], touches, invalid views) of frame ``fidx``;
        images/masks as StoredChunk (their LZF chunk) where LZF is usable here, else arrays."""
        cp, V, S = self.cp, len(self.names), self.cp.image_size
        row = self.row_of[int(fidx)]
        c = self.centre_of[int(fidx)]
        N = norm_from_raw(self.normalization, c)
        imgs = np.empty((V, S, S, 3), np.uint8)
        msks = np.empty((V, S, S), np.uint8)
        K = np.empty((V, 3, 3))
        c2w = np.empty((V, 4, 4))
        ok = np.zeros(V, bool)
        qc = np.empty((3, V), np.float32)
        touch = np.zeros(V, bool)
        invalid: list = []  # (camera, reason) of the invalid views
        img_streams, mask_streams = [], []
        for v, n in enumerate(self.names):
            x0, y0, x1, y1 = (int(b) for b in self.boxes[n][row])
            stored = x1 > x0 and y1 > y0
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)  # an empty mask: one pixel, invalid below
            image, mask = self.readers[v].read(row, (x0, y0, x1, y1), stored)
            # the crop lands in the sample's arrays
            r = crop_view(image, mask, self.preps[v], c, N, params=cp, origin=(x0, y0), out=(imgs[v], msks[v]))
            K[v], c2w[v], ok[v] = r.K, r.c2w, r.valid  # r.image, r.mask are imgs[v], msks[v]
            qc[:, v] = (r.size_ratio, r.center_offset_px, r.f)
            touch[v] = r.touches_crop_border
            if not r.valid:
                invalid.append((n, r.reason))
            if self.compress:
                streams = _view_streams(r, self.bg_value)
                img_streams += streams[0]
                mask_streams += streams[1]
        if self.compress:  # chunks joined from the views' LZF pieces (stored as the writer would)
            imgs = StoredChunk(imgs, *lzf_join(img_streams, imgs))
            msks = StoredChunk(msks, *lzf_join(mask_streams, msks))
        return N, imgs, msks, K, c2w, ok, qc, touch, invalid


def _for_pipe(chunk: StoredChunk | np.ndarray) -> tuple:
    """What a worker sends of a frame's images/masks: only the LZF chunk where it is compressed
    (ShardWriter.add stores a StoredChunk's data as is and needs only its array's shape and
    dtype), else the array (stored raw, or compressed by the writer when LZF is not usable)."""
    if isinstance(chunk, StoredChunk):
        if chunk.filter_mask == 0:
            return ("lzf", chunk.array.shape, bytes(chunk.data))
        return ("raw", chunk.array)
    return ("array", chunk)


def _from_pipe(msg: tuple) -> StoredChunk | np.ndarray:
    if msg[0] == "lzf":  # a stand-in array of the right shape and dtype, never read (the chunk is stored as is)
        return StoredChunk(np.broadcast_to(np.zeros((), np.uint8), msg[1]), 0, msg[2])
    if msg[0] == "raw":  # as lzf_join gives it for a chunk LZF does not shorten
        return StoredChunk(msg[1], 1, np.ascontiguousarray(msg[1]).reshape(-1).view(np.uint8))
    return msg[1]


# --- the step -----------------------------------------------------------------------------
def run_crop_shards(masks_h5: dict[str, str], cameras_json: str, centers_csv: str,
                    normalization_json: str, out_h5: str, chunk: int, num_chunks: int, params: dict[str, Any],
                    session: str | None = None, workers: int = 1) -> int:
    """Crop all V cameras for every valid frame of this chunk into one shard; returns N.

    ``workers``: with more than one, forked processes read, crop and LZF-compress whole frames
    (frame i in worker i % workers, two frames ahead each) while the calling process writes;
    each opens the masks files itself. Threads helped little: ~40 % of the crop's CPU time is
    Python/NumPy holding the GIL. The shard is the same either way.

    ``params``: the config's crop settings (``image_size``, ``size_ratio``, ``background``, ...;
    see :class:`workflow_scripts.crop.CropParams`); all of them, the resolved crop settings and
    chunk/num_chunks go into the shard's ``params_json``. ``session`` defaults to
    ``params["session"]`` or the name of ``out_h5``'s parent directory.
    """
    cp = CropParams.from_dict(params)
    cameras = read_cameras_json(cameras_json)
    names = [c.name for c in cameras]
    centers = read_centers(centers_csv)
    normalization = read_normalization(normalization_json)
    session = session or str(params.get("session") or Path(out_h5).parent.name)
    V, S = len(cameras), cp.image_size
    attrs = {**params, "crop": cp.to_dict(), "chunk": int(chunk), "num_chunks": int(num_chunks), "session": session}

    with contextlib.ExitStack() as stack:
        mf = open_per_camera(masks_h5, cameras, "masks", "masks")
        for f in mf.values():
            stack.callback(f.close)
        ref = mf[names[0]]["frame_index"][:].astype(np.int64)
        boxes = {}
        for n in names:
            f = mf[n]
            if "frames" not in f or "stored_box" not in f:
                raise InputError(f"{f.filename}: holds no frame pixels (an older masks file). Fix: delete it and rerun masks.")
            if cp.background == "keep" and f.attrs.get("store_frames") != "full":
                raise InputError(f"{f.filename}: crop.background 'keep' needs whole frames, but this file keeps only the "
                                 "pixels around the mouse. Fix: rerun the masks rule (snakemake does when the config "
                                 "says keep).")
            fi = f["frame_index"][:].astype(np.int64)
            if not np.array_equal(fi, ref):
                raise InputError(f"{f.filename}: frame_index of camera {n!r} differs from camera {names[0]!r} "
                                 f"({len(fi)} vs {len(ref)} frames). Fix: rerun masks with the same "
                                 "start_frame/max_frames/stride for every camera.")
            boxes[n] = f["stored_box"][:]
        row_of = {int(v): i for i, v in enumerate(ref)}
        valid = centers[centers["valid"]]
        mine = chunk_frames(valid["frame_index"].to_numpy(), chunk, num_chunks)
        absent = [int(i) for i in mine if int(i) not in row_of]
        if absent:
            raise InputError(f"{centers_csv}: valid frames {absent[:5]} are not in the masks files "
                             f"({mf[names[0]].filename}). Fix: rerun locate on the current masks.")
        xyz = valid.set_index("frame_index")[["x", "y", "z"]]
        centre_of = dict(zip(xyz.index.to_numpy(np.int64).tolist(), xyz.to_numpy(np.float64)))
        cropper = _Cropper(masks_h5, cameras, boxes, cp, row_of, centre_of, normalization)
        pool = None
        if workers > 1 and len(mine) > 1:
            def crop_frame(fidx: int) -> tuple:
                N, imgs, msks, *rest = cropper.frame(fidx)
                return (N, _for_pipe(imgs), _for_pipe(msks), *rest)

            # each worker opens the masks files itself: never the parent's handles; the workers
            # stop before the files close (LIFO), killed after an error
            pool = stack.enter_context(ForkedWorkers(min(int(workers), len(mine)), crop_frame, "crop_shards frame",
                                                     start=cropper.open))
        else:
            cropper.open(stack, mf)
        with ShardWriter(out_h5, kind="real", num_views=V, image_size=S, params=attrs) as w:
            if len(mine) == 0:
                log.warning("%s: chunk %d/%d of session %s has no valid frames; writing an empty shard",
                            out_h5, chunk, num_chunks, session)
                _create_empty_datasets(w)
            n_invalid = 0
            # in the workers: two frames per worker in flight while this process writes
            cropped = pool.map([int(f) for f in mine]) if pool else (cropper.frame(int(f)) for f in mine)
            for (N, imgs, msks, K, c2w, ok, qc, touch, invalid), fidx in zip(
                    cropped, tqdm(mine, desc=f"crop {session} chunk {chunk}", unit="frame")):
                if pool:
                    imgs, msks = _from_pipe(imgs), _from_pipe(msks)
                for n, reason in invalid:
                    log.info("frame %d camera %s invalid: %s", fidx, n, reason)
                n_invalid += int((~ok).sum())
                w.add(images=imgs, masks=msks, K=K, c2w=c2w, frame_index=int(fidx), session=session,
                      norm_from_raw=N, view_valid=ok,
                      extras={"qc/size_ratio": qc[0], "qc/center_offset_px": qc[1], "qc/focal": qc[2],
                              "qc/touches_crop_border": touch})
        if len(mine):
            log.info("%s: %d frames x %d views, %d views invalid", out_h5, len(mine), V, n_invalid)
    return len(mine)


def _create_empty_datasets(w: ShardWriter) -> None:
    """Give an N = 0 shard every per-sample dataset with shape [0, ...] so readers need no special
    case. ShardWriter has no public hook for this, hence its private ``_dataset``."""
    for name, (dtype, shape_fn) in _COMMON.items():
        w._dataset(name, dtype, shape_fn(w.V, w.S))
    for name in ("qc/size_ratio", "qc/center_offset_px", "qc/focal"):
        w._dataset(name, np.float32, (w.V,))
    w._dataset("qc/touches_crop_border", np.bool_, (w.V,))


# --- FaceLift folder export ---------------------------------------------------------------
def export_facelift_folder(shard_path: str | os.PathLike, sample_index: int, out_dir: str | os.PathLike,
                           only_valid: bool = False) -> Path:
    """One shard sample -> FaceLift's folder format, written atomically (temp dir + rename).

    ``out_dir/images/cam_{v:03d}.png``: RGBA, alpha = mask. ``out_dir/opencv_cameras.json``:
    ``{"frames": [{"w", "h", "fx", "fy", "cx", "cy", "w2c" (4x4 OpenCV world-to-camera,
    normalized world = inverse of the shard's c2w), "file_path"}]}``. The crop K has no skew.
    """
    out = Path(out_dir)
    with open_shard(shard_path) as f:
        n = int(f.attrs.get("num_samples", len(f["session"])))
        if not (0 <= sample_index < n):
            raise InputError(f"{shard_path}: sample {sample_index} out of range (shard has {n}). Fix: pick 0..{n - 1}.")
        s = read_sample(f, sample_index)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        frames = []
        for v in range(s["images"].shape[0]):
            if only_valid and not s["view_valid"][v]:
                continue
            rgba = np.concatenate([s["images"][v], s["masks"][v][..., None]], axis=-1)
            rel = f"images/cam_{v:03d}.png"
            Image.fromarray(rgba, "RGBA").save(tmp / rel)
            K = s["K"][v].astype(np.float64)
            Sh, Sw = s["images"].shape[1:3]
            frames.append({"w": int(Sw), "h": int(Sh), "fx": float(K[0, 0]), "fy": float(K[1, 1]),
                           "cx": float(K[0, 2]), "cy": float(K[1, 2]),
                           "w2c": np.linalg.inv(s["c2w"][v].astype(np.float64)).tolist(), "file_path": rel})
        write_json(tmp / "opencv_cameras.json", {"frames": frames, "session": s["session"],
                                                 "frame_index": s["frame_index"]})
        # Replace an existing export: move it aside, rename the new one in, then delete the old.
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
