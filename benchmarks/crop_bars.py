"""Measure the crop bars (issue 3) on data with known ground truth; prints tables.

Modes (each prints a table; nothing is written):

  --synthetic            no recording needed: the real DANNCE calibration (1152 x 1024, skew,
                         distortion) and an ellipsoid "mouse" mesh at several places. Reports the
                         mask IoU against the exactly rasterized mesh for ``linear`` vs ``nearest``
                         mask remapping, the pixel-size rule error, fast-vs-exact map error, and
                         crop time per view vs H.264 decode time per frame.
  --demo DIR             the demo recording (results/demo_recording: videos/, ground_truth.h5 with
                         vertices [T, 14522, 3] raw mm, faces, com [T, 3], masks [C, T, H, W],
                         cameras K / dist / w2c). Crops every frame and view with the TRUE mask and
                         TRUE centre of mass (isolates the crop itself).
  --demo DIR --shards F  evaluate pipeline shards (located centre, estimated masks) against the
                         demo's ground truth instead.

Bars (per view, over frames): (1) the true CoM reprojects to the crop centre (median px);
(2) IoU of the crop mask vs the true mesh projected through the crop K / c2w (cv2 polygon fill,
4x supersampled); (3) CV of sqrt(mask area)/S over views and frames, and the mask centroid's
offset from the crop centre.

    .venv/bin/python benchmarks/crop_bars.py --synthetic
    .venv/bin/python benchmarks/crop_bars.py --demo results/demo_recording [--shards 'results/shards/demo/*.h5']
"""
from __future__ import annotations

import argparse
import glob
import math
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from workflow_scripts.cameras import Camera
from workflow_scripts.crop import CropParams, crop_view, exact_maps, fast_maps, prepare_camera, project_pinhole
from workflow_scripts.shards import open_shard, read_sample

SS = 4  # supersampling of the reference rasterization


def raster_mesh(uv: np.ndarray, faces: np.ndarray, ok: np.ndarray, H: int, W: int) -> np.ndarray:
    """Silhouette [H, W] uint8 (255/0) of a mesh whose vertices project to ``uv`` [V, 2]
    (continuous corner-origin pixels); faces with a vertex behind the camera (``ok`` False) are
    skipped. Rasterized SS x larger and area-averaged, then thresholded at 0.5 coverage, so
    OpenCV's edge-inclusive fill does not dilate the truth."""
    big = np.zeros((H * SS, W * SS), np.uint8)
    pts = np.round((uv * SS - 0.5) * 16).astype(np.int32)  # OpenCV pixel centres, 4 fractional bits
    for f in faces[ok[faces].all(1)]:
        cv2.fillConvexPoly(big, pts[f], 255, lineType=cv2.LINE_8, shift=4)
    cov = cv2.resize(big.astype(np.float32) / 255, (W, H), interpolation=cv2.INTER_AREA)
    return np.where(cov >= 0.5, np.uint8(255), np.uint8(0))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else float("nan")


def crop_truth(r, N: np.ndarray, verts_raw: np.ndarray, faces: np.ndarray, S: int) -> np.ndarray:
    """True silhouette in the crop: raw vertices -> normalized world -> crop K / c2w (pinhole)."""
    Xn = verts_raw @ N[:3, :3].T + N[:3, 3]
    c2w = np.asarray(r.c2w if hasattr(r, "c2w") else r[1], dtype=np.float64)
    K = np.asarray(r.K if hasattr(r, "K") else r[0], dtype=np.float64)
    z = (Xn - c2w[:3, 3]) @ c2w[:3, 2]
    return raster_mesh(project_pinhole(K, c2w, Xn), faces, z > 0, S, S)


def simple_norm(center: np.ndarray, cams: list[Camera], distance: float = 2.7) -> np.ndarray:
    """Raw world already z up: X_norm = s (X - c), s from the mean camera distance."""
    s = distance / np.mean([np.linalg.norm(c.center - center) for c in cams])
    N = np.eye(4)
    N[:3, :3] *= s
    N[:3, 3] = -s * center
    return N


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n== {title}")
    print(" | ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>14.4f}" if isinstance(r[c], float) else f"{str(r[c]):>14}" for c in cols))


def summarize(name: str, com_px: list[float], ious: list[float], ratios: list[float], offsets: list[float], valid: list[bool]) -> dict:
    ratios = np.asarray(ratios)
    return {"view": name, "com_px_median": float(np.nanmedian(com_px)), "iou_median": float(np.nanmedian(ious)),
            "iou_min": float(np.nanmin(ious)), "size_ratio_mean": float(np.mean(ratios)),
            "size_ratio_cv": float(np.std(ratios) / np.mean(ratios)), "offset_px_med": float(np.nanmedian(offsets)),
            "valid_frac": float(np.mean(valid))}


COLS = ["view", "com_px_median", "iou_median", "iou_min", "size_ratio_mean", "size_ratio_cv", "offset_px_med", "valid_frac"]


# --- synthetic ------------------------------------------------------------------------------
def dannce_cameras() -> list[Camera]:
    from workflow_scripts.calibration import read_calibration
    path = Path(__file__).resolve().parents[1].parent / "shared" / "dannce" / "markerless_mouse_1" / "label3d_dannce.mat"
    cams, _ = read_calibration(path, image_size=(1152, 1024))
    return cams


def ellipsoid(center: np.ndarray, yaw: float) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=4)
    m.apply_scale([45.0, 18.0, 16.0])  # mm: a mouse-sized ellipsoid
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw).as_matrix()
    T[:3, 3] = center
    m.apply_transform(T)
    return m


def decode_ms_per_frame(W: int, H: int, n: int = 60) -> float:
    from workflow_scripts.video import iter_frames, write_video
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (H // 8, W // 8, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.mp4"
        write_video(p, (np.roll(base, 3 * i, axis=1) for i in range(n)), fps=30)
        t0 = time.perf_counter()
        k = sum(1 for _ in iter_frames(p))
        return (time.perf_counter() - t0) / k * 1e3


def run_synthetic(S: int, ratio: float) -> None:
    cams = dannce_cameras()
    preps = [prepare_camera(c) for c in cams]
    rng = np.random.default_rng(0)
    per_interp: dict[str, list] = {"linear": [], "nearest": []}
    ratios, offsets, times, map_err, valid = [], [], [], [], []
    for trial in range(6):
        # DANNCE's cameras (~300 mm away, f ~ 1660 px) all see the region near the origin.
        center = np.array([rng.uniform(-30, 30), rng.uniform(-30, 30), 18.0])
        mesh = ellipsoid(center, rng.uniform(0, 2 * np.pi))
        N = simple_norm(center, cams)
        for cam, prep in zip(cams, preps):
            z = cam.to_camera(mesh.vertices)[:, 2]
            true_orig = raster_mesh(cam.project(mesh.vertices), mesh.faces, z > 0, cam.height, cam.width)
            img = np.full((cam.height, cam.width, 3), 100, np.uint8)
            for interp in per_interp:
                p = CropParams(image_size=S, size_ratio=ratio, mask_interp=interp, background="white")
                t0 = time.perf_counter()
                r = crop_view(img, true_orig, prep, center, N, params=p)
                dt = time.perf_counter() - t0
                if r.valid:  # a view whose mouse is cut by the image border cannot match the full mesh
                    per_interp[interp].append(iou(r.mask, crop_truth(r, N, mesh.vertices, mesh.faces, S)))
                if interp == "linear":
                    valid.append(r.valid)
                    times.append(dt)
                    ratios.append(r.size_ratio)
                    offsets.append(r.center_offset_px)
                    R_v = r.c2w_raw[:3, :3]
                    a, b = fast_maps(prep, R_v, r.K, S), exact_maps(prep, R_v, r.K, S)
                    inside = (b[..., 0] > 0) & (b[..., 0] < cam.width - 1) & (b[..., 1] > 0) & (b[..., 1] < cam.height - 1)
                    if inside.any():
                        map_err.append(float(np.abs(a[inside] - b[inside]).max()))
    # Throughput as in production: one frame, all views, back to back (the per-call times above
    # include cache-cold effects from the truth rasterization between calls).
    img = np.random.default_rng(1).integers(0, 256, (cams[0].height, cams[0].width, 3), dtype=np.uint8)
    center = np.array([0.0, 0.0, 18.0])
    mesh = ellipsoid(center, 0.3)
    N = simple_norm(center, cams)
    masks = [raster_mesh(c.project(mesh.vertices), mesh.faces, c.to_camera(mesh.vertices)[:, 2] > 0, c.height, c.width) for c in cams]
    p = CropParams(image_size=S, size_ratio=ratio)
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        for prep, m in zip(preps, masks):
            crop_view(img, m, prep, center, N, params=p)
    crop_ms = 1e3 * (time.perf_counter() - t0) / (reps * len(cams))
    dec = decode_ms_per_frame(cams[0].width, cams[0].height)
    V = len(cams)
    rows = [{"metric": f"IoU {k} (median)", "value": float(np.median(v))} for k, v in per_interp.items()]
    rows += [{"metric": f"IoU {k} (mean)", "value": float(np.mean(v))} for k, v in per_interp.items()]
    rows += [{"metric": f"IoU {k} (min)", "value": float(np.min(v))} for k, v in per_interp.items()]
    rows += [
        {"metric": "valid views", "value": float(np.mean(valid))},
        {"metric": "size ratio mean", "value": float(np.mean(ratios))},
        {"metric": "size ratio rel err max", "value": float(np.max(np.abs(np.array(ratios) / ratio - 1)))},
        {"metric": "centroid off px med", "value": float(np.median(offsets))},
        {"metric": "fast-exact map px max", "value": float(np.max(map_err))},
        {"metric": "crop ms/view (cold)", "value": 1e3 * float(np.median(times))},
        {"metric": "crop ms/view", "value": crop_ms},
        {"metric": "decode ms/frame/cam", "value": dec},
        {"metric": "thru vs decode", "value": dec / (dec + crop_ms)},
    ]
    print(f"synthetic: DANNCE rig ({V} cams, {cams[0].width}x{cams[0].height}), ellipsoid mouse, S={S}, ratio={ratio}")
    print_table("synthetic bars", rows, ["metric", "value"])
    print("(thru vs decode = decode / (decode + crop) per camera-frame; target >= 0.7)")


# --- demo ------------------------------------------------------------------------------------
def load_demo(demo: Path):
    gt = h5py.File(demo / "ground_truth.h5", "r")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in gt["camera_names"][:]]
    C, T, H, W = gt["masks"].shape
    cams = [Camera.from_dict({"name": n, "K": gt["K"][i], "dist": gt["dist"][i], "R": gt["w2c"][i][:3, :3],
                              "t": gt["w2c"][i][:3, 3], "width": W, "height": H}) for i, n in enumerate(names)]
    return gt, cams


def run_demo(demo: Path, S: int, ratio: float, interp: str) -> None:
    from workflow_scripts.video import iter_frames
    gt, cams = load_demo(demo)
    faces = gt["faces"][:]
    com = gt["com"][:]
    p = CropParams(image_size=S, size_ratio=ratio, mask_interp=interp, background="white")
    rows, t_dec, t_crop = [], 0.0, 0.0
    for ci, cam in enumerate(cams):
        prep = prepare_camera(cam)
        stats: dict[str, list] = {k: [] for k in ("com", "iou", "iou0", "ratio", "off", "valid")}
        it = iter_frames(demo / "videos" / f"{cam.name}.mp4")
        for t in range(com.shape[0]):
            t0 = time.perf_counter()
            _, frame = next(it)
            t1 = time.perf_counter()
            N = simple_norm(com[t], cams)
            r = crop_view(frame, gt["masks"][ci, t], prep, com[t], N, params=p)
            t_crop += time.perf_counter() - t1
            t_dec += t1 - t0
            c_n = N[:3, :3] @ com[t] + N[:3, 3]
            stats["com"].append(float(np.linalg.norm(project_pinhole(r.K, r.c2w, c_n) - S / 2)))
            stats["iou"].append(iou(r.mask, crop_truth(r, N, gt["vertices"][t], faces, S)))
            # baseline: the same true mask vs the mesh in the original (distorted) image
            z = cam.to_camera(gt["vertices"][t])[:, 2]
            stats["iou0"].append(iou(gt["masks"][ci, t], raster_mesh(cam.project(gt["vertices"][t]), faces, z > 0, cam.height, cam.width)))
            stats["ratio"].append(r.size_ratio)
            stats["off"].append(r.center_offset_px)
            stats["valid"].append(r.valid)
        rows.append(summarize(cam.name, stats["com"], stats["iou"], stats["ratio"], stats["off"], stats["valid"]))
        rows[-1]["iou_orig_median"] = float(np.nanmedian(stats["iou0"]))
    allr = np.array([r["size_ratio_mean"] for r in rows])
    print(f"demo {demo}: {len(cams)} cams x {com.shape[0]} frames, S={S}, ratio={ratio}, mask_interp={interp} (true masks, true CoM)")
    print_table("crop bars per view (iou_orig: true mask vs mesh in the original image, the reference for iou)", rows,
                COLS + ["iou_orig_median"])
    print(f"size ratio mean over views {allr.mean():.4f}; decode {1e3 * t_dec / len(cams) / com.shape[0]:.2f} ms/frame/cam, "
          f"crop {1e3 * t_crop / len(cams) / com.shape[0]:.2f} ms/view -> throughput vs decode {t_dec / (t_dec + t_crop):.2f}")


def run_shards(demo: Path, shard_glob: str) -> None:
    gt, cams = load_demo(demo)
    faces, com = gt["faces"][:], gt["com"][:]
    t_of = {int(f): i for i, f in enumerate(gt["frame_index"][:])}
    per_view: dict[int, dict[str, list]] = {}
    for path in sorted(glob.glob(shard_glob)):
        with open_shard(path) as f:
            n = int(f.attrs["num_samples"])
            S = int(f.attrs["image_size"])
            for i in range(n):
                s = read_sample(f, i)
                t = t_of[s["frame_index"]]
                N = s["norm_from_raw"]
                c_n = N[:3, :3] @ com[t] + N[:3, 3]
                for v in range(s["K"].shape[0]):
                    st = per_view.setdefault(v, {k: [] for k in ("com", "iou", "ratio", "off", "valid")})
                    K, c2w = s["K"][v].astype(np.float64), s["c2w"][v].astype(np.float64)
                    st["com"].append(float(np.linalg.norm(project_pinhole(K, c2w, c_n) - S / 2)))
                    st["iou"].append(iou(s["masks"][v], crop_truth((K, c2w), N, gt["vertices"][t], faces, S)))
                    st["ratio"].append(math.sqrt(cv2.countNonZero(s["masks"][v])) / S)
                    st["off"].append(float(f["qc/center_offset_px"][i, v]) if "qc/center_offset_px" in f else float("nan"))
                    st["valid"].append(bool(s["view_valid"][v]))
    if not per_view:
        raise SystemExit(f"no samples in {shard_glob}")
    rows = [summarize(cams[v].name if v < len(cams) else str(v), **{"com_px": st["com"], "ious": st["iou"], "ratios": st["ratio"],
                                                                     "offsets": st["off"], "valid": st["valid"]})
            for v, st in sorted(per_view.items())]
    print(f"shards {shard_glob} vs ground truth {demo}")
    print_table("pipeline crop bars per view", rows, COLS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--demo", type=Path, default=None)
    ap.add_argument("--shards", default=None, help="glob of shards to evaluate against --demo ground truth")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--mask-interp", default="linear", choices=["linear", "nearest"])
    ap.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's)")
    a = ap.parse_args()
    if a.threads is not None:
        cv2.setNumThreads(a.threads)
    if a.synthetic:
        run_synthetic(a.size, a.ratio)
    if a.demo is not None:
        run_shards(a.demo, a.shards) if a.shards else run_demo(a.demo, a.size, a.ratio, a.mask_interp)
    if not a.synthetic and a.demo is None:
        ap.error("give --synthetic and/or --demo DIR")


if __name__ == "__main__":
    main()
