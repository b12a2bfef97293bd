"""Datasets over HDF5 shards for GS-LRM training (docs/conventions.md, "Shards").

One training item is one multi-view sample: ``num_input_views`` views go into the network and
``M`` supervision views are rendered and compared. Every camera is returned as ``K`` [3, 3]
(pixels, top-left *corner* origin) and ``c2w`` [4, 4] (OpenCV camera-to-world, normalized world,
z up). Item dict (tensors, float32 unless noted)::

    input_images  [V, 3, H, W] in [0, 1]     input_K  [V, 3, 3]   input_c2w  [V, 4, 4] (c2w)
    target_images [M, 3, H, W] in [0, 1]     target_K [M, 3, 3]   target_c2w [M, 4, 4] (c2w)
    target_masks  [M, 1, H, W] in [0, 1]     target_depth [M, 1, H, W] (synthetic only; camera z, 0 = bg)
    input_masks   [V, 1, H, W]               background [3] (colour composited behind the mouse)
    input_views / target_views  int64 [V] / [M] (view indices in the shard)
    sample_index  int64 []  (global index in the dataset)
    neighbor_*    the same keys for the temporally neighbouring frame (real data, temporal pairs),
                  with the same view indices; ``has_neighbor`` bool [] says whether one existed
                  (if not, the neighbor_* tensors repeat the current frame).

Determinism: every random choice of an item comes from a NumPy generator seeded by
``(seed, item_seed)``; ``MixedBatchSampler`` derives item seeds from ``(seed, batch position,
slot)``, so a run that restarts at batch position ``p`` sees exactly the batches it would have
seen (exact resume). Batches are homogeneous in source (all synthetic or all real) because the
two kinds have different numbers of supervision views and different keys.
"""
from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from workflow_scripts.errors import InputError
from workflow_scripts.shards import open_shard, read_sample

VIEW_SELECTIONS = ("random", "overlap")
BACKGROUNDS = ("white", "black", "random")


@dataclass
class DataConfig:
    """Which shards to read and how to turn a sample into a training item.

    ``synthetic`` / ``real``: lists of shard paths or glob patterns. ``synthetic_ratio``: share of
    batches drawn from the synthetic shards when both are given (batches are never mixed, see
    module docstring). ``holdout_fraction``: the last part (by frame_index) of every *real*
    session is left out of training (``holdout_mask``; evaluation uses the same rule). ``image_size``: the model's H = W;
    shards of any S are resized with ``cv2.INTER_AREA`` and K scaled exactly (K' = diag(s, s, 1) K,
    s = image_size / S, valid for the corner-origin pixel convention).
    """

    synthetic: list[str] = field(default_factory=list)
    real: list[str] = field(default_factory=list)
    synthetic_ratio: float = 1.0
    holdout_fraction: float = 0.0
    num_input_views: int = 4
    num_supervision_views: int = 4          # synthetic samples
    num_supervision_views_real: int = 2     # real samples (6 cameras: 4 inputs + 2 held out)
    image_size: int = 256
    view_selection: str = "overlap"         # "random" | "overlap"
    overlap_max_angle_deg: float = 60.0     # overlap rule: a target must be this close to an input
    background: str = "white"               # "white" | "black" | "random"
    temporal_pairs: bool = False            # real data: also return the neighbouring frame
    temporal_max_gap: int = 10              # max |frame_index difference| of a neighbour
    num_workers: int = 2
    seed: int = 0

    def validate(self, source: str = "<data config>") -> "DataConfig":
        if self.view_selection not in VIEW_SELECTIONS:
            raise InputError(f"{source}: data.view_selection={self.view_selection!r}. Fix: use one of {VIEW_SELECTIONS}.")
        if self.background not in BACKGROUNDS:
            raise InputError(f"{source}: data.background={self.background!r}. Fix: use one of {BACKGROUNDS}.")
        for name in ("synthetic_ratio", "holdout_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{source}: data.{name}={getattr(self, name)} is not in [0, 1]. Fix: set a fraction.")
        if self.num_input_views < 1 or self.num_supervision_views < 1 or self.num_supervision_views_real < 1:
            raise InputError(f"{source}: view counts must be >= 1. Fix: set data.num_input_views / num_supervision_views*.")
        if self.image_size < 8:
            raise InputError(f"{source}: data.image_size={self.image_size} is too small. Fix: use >= 8.")
        return self


def expand_paths(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Shard paths from paths/glob patterns, sorted, duplicates removed (InputError if a pattern matches nothing)."""
    out: list[Path] = []
    for p in patterns:
        hits = sorted(glob.glob(str(p))) if glob.has_magic(str(p)) else ([str(p)] if Path(p).exists() else [])
        if not hits:
            raise InputError(f"{p}: no shard file matches. Fix: build the shards first or correct the path/glob in the data config.")
        out.extend(Path(h) for h in hits)
    return sorted(set(out))


def holdout_mask(sessions: Sequence[str], frame_index: np.ndarray, fraction: float) -> np.ndarray:
    """bool [N]: True for samples in the last ``fraction`` of their session.

    Per session, the distinct frame indices are sorted and the last ``ceil(fraction * n)`` are
    held out (none when fraction is 0), so training never sees the frames evaluation uses.
    """
    frame_index = np.asarray(frame_index)
    out = np.zeros(len(sessions), bool)
    if fraction <= 0:
        return out
    sess = np.asarray(sessions, dtype=object)
    for s in set(sessions):
        sel = sess == s
        frames = np.unique(frame_index[sel])
        n_hold = int(math.ceil(fraction * len(frames)))
        if n_hold:
            out[sel] = frame_index[sel] >= frames[len(frames) - n_hold]
    return out


# --------------------------------------------------------------------------------------------
# image helpers


def resize_views(images: np.ndarray, masks: np.ndarray, K: np.ndarray, size: int,
                 depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Resize square views to ``size`` x ``size``.

    images uint8 [V, S, S, 3] -> float32 [V, size, size, 3] in [0, 1]; masks uint8 [V, S, S] ->
    float32 [V, size, size] in [0, 1] (area-averaged, so edges become fractional alpha); K [V, 3, 3]
    -> diag(s, s, 1) @ K exactly (corner-origin pixels: continuous coordinate u maps to s * u).
    depth [V, S, S] (0 = background) is averaged over foreground pixels only, so the mouse's
    silhouette never blends with the zeros of the background; pixels without foreground stay 0.
    """
    V, S = images.shape[0], images.shape[1]
    img = images.astype(np.float32) / 255.0
    msk = masks.astype(np.float32) / 255.0
    Ks = K.astype(np.float32).copy()
    if S == size:
        out_d = None if depth is None else depth.astype(np.float32)
        return img, msk, Ks, out_d
    s = size / S
    Ks = (np.diag([s, s, 1.0]).astype(np.float32) @ Ks).astype(np.float32)
    interp = cv2.INTER_AREA if size < S else cv2.INTER_LINEAR
    img_o = np.stack([cv2.resize(img[v], (size, size), interpolation=interp) for v in range(V)])
    msk_o = np.stack([cv2.resize(msk[v], (size, size), interpolation=interp) for v in range(V)])
    out_d = None
    if depth is not None:
        fg = (depth > 0).astype(np.float32)
        num = np.stack([cv2.resize(depth[v].astype(np.float32) * fg[v], (size, size), interpolation=cv2.INTER_AREA) for v in range(V)])
        den = np.stack([cv2.resize(fg[v], (size, size), interpolation=cv2.INTER_AREA) for v in range(V)])
        out_d = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)
    return np.clip(img_o, 0.0, 1.0), np.clip(msk_o, 0.0, 1.0), Ks, out_d


def composite(images: np.ndarray, masks: np.ndarray, background: np.ndarray) -> np.ndarray:
    """images [V, H, W, 3] * mask + background [3] * (1 - mask); masks [V, H, W] in [0, 1]."""
    m = masks[..., None]
    return (images * m + background.reshape(1, 1, 1, 3) * (1.0 - m)).astype(np.float32)


def camera_directions(c2w: np.ndarray) -> np.ndarray:
    """Unit vectors from the world origin to each camera centre; c2w [V, 4, 4] -> [V, 3]."""
    c = c2w[:, :3, 3].astype(np.float64)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def select_views(c2w: np.ndarray, valid: np.ndarray, n_in: int, n_tgt: int, mode: str,
                 rng: np.random.Generator, max_angle_deg: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """Choose input and target view indices among the valid views of one sample.

    c2w [V, 4, 4] (OpenCV camera-to-world, normalized world, z up); valid bool [V].

    * ``random``: a random permutation of the valid views; the first ``n_in`` are inputs, the
      next ``n_tgt`` targets.
    * ``overlap``: inputs spread in azimuth (angle of the camera centre about the world z axis):
      the first input is random, each next one maximises its smallest azimuth gap to the inputs
      chosen so far (farthest-point sampling on the circle, ties broken at random). Targets are
      drawn at random from the remaining valid views whose viewing direction (origin -> camera
      centre) lies within ``max_angle_deg`` of some input, i.e. near or between inputs, where
      the inputs see the same surface; if there are too few, the closest remaining views fill up.

    In both modes, when fewer than ``n_tgt`` non-input views are valid, input views are reused
    as targets (GS-LRM supervises input views too), so shapes stay fixed.
    Returns (inputs int64 [n_in], targets int64 [n_tgt]).
    """
    idx = np.flatnonzero(valid)
    if len(idx) < n_in:
        raise ValueError(f"only {len(idx)} valid views, need {n_in} inputs")
    if mode == "random":
        perm = rng.permutation(idx)
        inputs, rest = perm[:n_in], perm[n_in:]
        targets = rest[:n_tgt]
    elif mode == "overlap":
        centers = c2w[idx, :3, 3].astype(np.float64)
        az = np.arctan2(centers[:, 1], centers[:, 0])
        chosen = [int(rng.integers(len(idx)))]
        for _ in range(n_in - 1):
            d = np.abs(az[:, None] - az[chosen][None, :])
            gap = np.minimum(d, 2 * np.pi - d).min(axis=1)
            gap[chosen] = -1.0
            # Random tie-breaking: small jitter far below any real angular gap.
            score = gap + rng.uniform(0.0, 1e-6, size=gap.shape)
            chosen.append(int(np.argmax(score)))
        inputs = idx[chosen]
        rest = np.setdiff1d(idx, inputs)
        if len(rest):
            dirs = camera_directions(c2w)
            cosang = np.clip(dirs[rest] @ dirs[inputs].T, -1.0, 1.0)
            nearest = np.degrees(np.arccos(cosang.max(axis=1)))
            near = rest[nearest <= max_angle_deg]
            far = rest[nearest > max_angle_deg][np.argsort(nearest[nearest > max_angle_deg], kind="stable")]
            targets = np.concatenate([rng.permutation(near), far])[:n_tgt]
        else:
            targets = rest
    else:
        raise ValueError(f"unknown view selection {mode!r}")
    if len(targets) < n_tgt:
        fill = rng.choice(inputs, size=n_tgt - len(targets), replace=n_tgt - len(targets) > len(inputs))
        targets = np.concatenate([targets, fill])
    return np.asarray(inputs, np.int64), np.asarray(targets, np.int64)


def background_color(mode: str, rng: np.random.Generator) -> np.ndarray:
    """[3] float32 background colour in [0, 1]."""
    if mode == "white":
        return np.ones(3, np.float32)
    if mode == "black":
        return np.zeros(3, np.float32)
    return rng.uniform(0.0, 1.0, size=3).astype(np.float32)


# --------------------------------------------------------------------------------------------
# datasets


class ShardDataset(Dataset):
    """Samples of one kind (all ``synthetic`` or all ``real``) from one or more shards.

    The index (which samples have enough valid views, sessions and frame indices for temporal
    pairs) is read once at construction; image data is read lazily. HDF5 handles are opened per
    process on first use (h5py handles are not fork-safe) and never pickled.

    ``dataset[i]`` uses item seed ``i``; ``dataset[(i, item_seed, batch_seed)]`` is what
    ``MixedBatchSampler`` passes. ``batch_seed`` fixes the random background of a whole batch
    (the renderer draws one background per call).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], cfg: DataConfig):
        self.cfg = cfg.validate()
        self.paths = expand_paths(paths)
        if not self.paths:
            raise InputError("<data config>: an empty list of shards. Fix: give at least one shard path or glob.")
        kinds, index, sessions, frames = set(), [], [], []
        for fi, p in enumerate(self.paths):
            with open_shard(p) as f:
                kind = str(f.attrs["kind"])
                kinds.add(kind)
                for name in ("images", "masks", "K", "c2w", "view_valid", "frame_index", "session"):
                    if name not in f:
                        raise InputError(f"{p}: shard has no {name!r} dataset. Fix: rebuild it with workflow_scripts.shards.ShardWriter.")
                valid = f["view_valid"][:]
                fidx = f["frame_index"][:]
                sess = [s.decode() if isinstance(s, bytes) else str(s) for s in f["session"][:]]
            held = holdout_mask(sess, fidx, cfg.holdout_fraction) if kind == "real" else np.zeros(len(sess), bool)
            for i in range(valid.shape[0]):
                if int(valid[i].sum()) >= cfg.num_input_views and not held[i]:
                    index.append((fi, i))
                    sessions.append(sess[i])
                    frames.append(int(fidx[i]))
        if len(kinds) != 1:
            raise InputError(f"{self.paths}: mixes shard kinds {sorted(kinds)}. Fix: list synthetic and real shards separately (DataConfig.synthetic / .real).")
        self.kind = kinds.pop()
        if not index:
            raise InputError(f"{self.paths}: no sample has {cfg.num_input_views} valid views. Fix: check the QC of these shards or lower data.num_input_views.")
        self.index = index
        self.num_targets = cfg.num_supervision_views if self.kind == "synthetic" else cfg.num_supervision_views_real
        self.neighbor = self._neighbors(sessions, frames) if (cfg.temporal_pairs and self.kind == "real") else None
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def _neighbors(self, sessions: list[str], frames: list[int]) -> np.ndarray:
        """For each item the index of the nearest later frame of the same session (or the nearest
        earlier one when there is no later one) within ``temporal_max_gap``; -1 if none."""
        out = np.full(len(sessions), -1, np.int64)
        by_session: dict[str, list[int]] = {}
        for j, s in enumerate(sessions):
            by_session.setdefault(s, []).append(j)
        for items in by_session.values():
            items.sort(key=lambda j: frames[j])
            for a, j in enumerate(items):
                cands = []
                if a + 1 < len(items):
                    cands.append(items[a + 1])
                if a > 0:
                    cands.append(items[a - 1])
                for c in cands:
                    if 0 < abs(frames[c] - frames[j]) <= self.cfg.temporal_max_gap:
                        out[j] = c
                        break
        return out

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def _file(self, fi: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked worker: drop the parent's handles, never use them
            self._files, self._pid = {}, os.getpid()
        if fi not in self._files:
            self._files[fi] = open_shard(self.paths[fi])
        return self._files[fi]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def _read(self, j: int, views: np.ndarray) -> dict[str, Any]:
        """Views of item j in the order given (duplicates allowed)."""
        fi, i = self.index[j]
        return read_sample(self._file(fi), i, views)

    def _views_only(self, j: int, name: str) -> np.ndarray:
        fi, i = self.index[j]
        return self._file(fi)[name][i]

    def _frame(self, j: int, views_in: np.ndarray, views_tgt: np.ndarray, bg: np.ndarray) -> dict[str, torch.Tensor]:
        size = self.cfg.image_size
        views = np.concatenate([views_in, views_tgt])
        raw = self._read(j, views)
        img, msk, K, depth = resize_views(raw["images"], raw["masks"], raw["K"], size, raw.get("depth"))
        img = composite(img, msk, bg)
        n = len(views_in)
        chw = torch.from_numpy(img).permute(0, 3, 1, 2).contiguous()
        m = torch.from_numpy(msk)[:, None]
        c2w = torch.from_numpy(raw["c2w"].astype(np.float32))
        Kt = torch.from_numpy(K)
        out = {
            "input_images": chw[:n], "input_masks": m[:n], "input_K": Kt[:n], "input_c2w": c2w[:n],
            "target_images": chw[n:], "target_masks": m[n:], "target_K": Kt[n:], "target_c2w": c2w[n:],
            "input_views": torch.from_numpy(views_in), "target_views": torch.from_numpy(views_tgt),
        }
        if depth is not None:
            out["target_depth"] = torch.from_numpy(depth[n:])[:, None]
        return out

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, torch.Tensor]:
        if isinstance(key, (tuple, list)):
            j, item_seed, batch_seed = (int(k) for k in key)
        else:
            j, item_seed, batch_seed = int(key), int(key), int(key)
        rng = np.random.default_rng([self.cfg.seed, item_seed])
        bg = background_color(self.cfg.background, np.random.default_rng([self.cfg.seed, batch_seed, 7]))
        c2w_all = self._views_only(j, "c2w")
        valid = self._views_only(j, "view_valid").astype(bool)
        vin, vtg = select_views(c2w_all, valid, self.cfg.num_input_views, self.num_targets,
                                self.cfg.view_selection, rng, self.cfg.overlap_max_angle_deg)
        out = self._frame(j, vin, vtg, bg)
        out["background"] = torch.from_numpy(bg)
        out["sample_index"] = torch.tensor(j, dtype=torch.int64)
        if self.neighbor is not None:
            nb = int(self.neighbor[j])
            ok = nb >= 0 and bool(self._views_only(nb, "view_valid")[np.concatenate([vin, vtg])].all())
            other = self._frame(nb, vin, vtg, bg) if ok else out
            for k in ("input_images", "input_masks", "input_K", "input_c2w",
                      "target_images", "target_masks", "target_K", "target_c2w"):
                out[f"neighbor_{k}"] = other[k]
            out["has_neighbor"] = torch.tensor(ok)
        return out


class MixedDataset(Dataset):
    """Several ``ShardDataset`` sources behind one Dataset; keys are
    ``(source, index, item_seed, batch_seed)`` tuples produced by ``MixedBatchSampler``."""

    def __init__(self, sources: Sequence[ShardDataset]):
        self.sources = list(sources)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        src, j, item_seed, batch_seed = (int(k) for k in key)
        return self.sources[src][(j, item_seed, batch_seed)]


def _mix(*ints: int) -> int:
    """A 63-bit seed from integers (SeedSequence hashing: stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(i) & 0xFFFFFFFF for i in ints]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class MixedBatchSampler(Sampler[list[tuple[int, int, int, int]]]):
    """Infinite, stateless-by-position batch sampler over several sources, DDP-aware.

    Global batch ``p`` (p = 0, 1, ...) comes from source k chosen with probability
    ``weights[k]`` by a generator seeded with ``(seed, p)``; all ranks agree on it. Each source is
    an endless stream of epochs; element ``e`` of source k is ``perm(seed, k, epoch)[e % n_k]``
    with ``epoch = e // n_k``. Global batch p takes the next ``batch_size * world_size`` elements of
    its source, and rank r keeps slice ``[r * batch_size, (r + 1) * batch_size)`` (the
    DistributedSampler rule). So batch p is a pure function of (seed, p, rank), and
    ``start=p`` resumes exactly at data position p. Counting how many earlier batches used each
    source is vectorised, so a restart at p = 10^6 is instant.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start: int = 0):
        w = np.asarray(weights, np.float64)
        if len(sizes) != len(w) or len(sizes) == 0 or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"bad source sizes/weights {sizes} / {weights}")
        self.sizes = [int(s) for s in sizes]
        self.cdf = np.cumsum(w / w.sum())
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), int(rank), int(world_size)
        self.start = int(start)

    _BLOCK = 4096

    def _sources(self, block: int) -> np.ndarray:
        u = np.random.default_rng([self.seed, 11, block]).random(self._BLOCK)
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.sizes) - 1)

    def source_of(self, p: int) -> int:
        return int(self._sources(p // self._BLOCK)[p % self._BLOCK])

    def _counts_before(self, p: int) -> np.ndarray:
        """How many global batches before position p came from each source."""
        counts = np.zeros(len(self.sizes), np.int64)
        for b in range(p // self._BLOCK):
            counts += np.bincount(self._sources(b), minlength=len(self.sizes))
        rem = p % self._BLOCK
        if rem:
            counts += np.bincount(self._sources(p // self._BLOCK)[:rem], minlength=len(self.sizes))
        return counts

    def _element(self, k: int, e: int) -> int:
        n = self.sizes[k]
        perm = np.random.default_rng([self.seed, 13, k, e // n]).permutation(n)
        return int(perm[e % n])

    def batch_at(self, p: int, counts: np.ndarray | None = None) -> list[tuple[int, int, int, int]]:
        """This rank's keys for global batch p."""
        counts = self._counts_before(p) if counts is None else counts
        k = self.source_of(p)
        gb = self.batch_size * self.world_size
        first = int(counts[k]) * gb + self.rank * self.batch_size
        batch_seed = _mix(self.seed, p)
        return [(k, self._element(k, first + s), _mix(self.seed, p, self.rank * self.batch_size + s, 1), batch_seed)
                for s in range(self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        counts = self._counts_before(self.start)
        p = self.start
        while True:
            yield self.batch_at(p, counts)
            counts[self.source_of(p)] += 1
            p += 1

    def __len__(self) -> int:
        # Infinite; a large number keeps DataLoader/len() users working.
        return 2**62


def build_dataset(cfg: DataConfig) -> tuple[MixedDataset, list[float]]:
    """The sources of ``cfg`` (synthetic first, then real) and their batch weights."""
    sources, weights = [], []
    if cfg.synthetic:
        sources.append(ShardDataset(cfg.synthetic, cfg))
        weights.append(cfg.synthetic_ratio if cfg.real else 1.0)
    if cfg.real:
        sources.append(ShardDataset(cfg.real, cfg))
        weights.append(1.0 - cfg.synthetic_ratio if cfg.synthetic else 1.0)
    if not sources:
        raise InputError("<data config>: neither data.synthetic nor data.real lists a shard. Fix: add shard paths/globs.")
    if sum(weights) <= 0:
        raise InputError("<data config>: data.synthetic_ratio gives every source weight 0. Fix: set it in (0, 1).")
    return MixedDataset(sources), weights


def _worker_init(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM/SIGUSR1: under SLURM the signal reaches every process, and
    the training process must survive to save its checkpoint (it shuts its workers down itself)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def build_loader(cfg: DataConfig, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int | None = None, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """An endless DataLoader yielding this rank's batches from global data position ``start``.

    Each batch is a dict of stacked item tensors (leading batch dim B = ``batch_size``).
    """
    ds, weights = build_dataset(cfg)
    sampler = MixedBatchSampler([len(s) for s in ds.sources], weights, batch_size, cfg.seed, rank, world_size, start)
    nw = cfg.num_workers if num_workers is None else num_workers
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=nw, pin_memory=pin_memory,
                                       persistent_workers=False, prefetch_factor=2 if nw > 0 else None,
                                       worker_init_fn=_worker_init if nw > 0 else None)


# --------------------------------------------------------------------------------------------
# a toy scene for tests and benchmarks


def toy_views(num_views: int, distance: float = 2.7, elevations_deg: Sequence[float] = (-10.0, 20.0)) -> np.ndarray:
    """[V, 4, 4] OpenCV c2w cameras on rings around the origin (z up), looking at the origin."""
    from workflow_scripts.cameras import look_at_c2w

    out = []
    rings = len(elevations_deg)
    for v in range(num_views):
        el = math.radians(elevations_deg[v % rings])
        az = 2 * math.pi * v / num_views
        eye = distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        out.append(look_at_c2w(eye, np.zeros(3)))
    return np.stack(out).astype(np.float32)


def render_toy_ellipsoid(c2w: np.ndarray, K: np.ndarray, size: int, radii: Sequence[float] = (0.6, 0.35, 0.3),
                         background: float = 1.0, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ray-traced image of a textured ellipsoid at the origin (our toy "mouse").

    c2w [V, 4, 4] OpenCV camera-to-world; K [V, 3, 3] (pixel centres at +0.5). The colour is a
    smooth function of the surface point (stripes along x, hue by normal) with Lambertian-ish
    shading. Returns images uint8 [V, S, S, 3], masks uint8 [V, S, S] (255 = object) and depth
    float32 [V, S, S] (camera z, 0 = background). ``phase`` shifts the texture (temporal pairs).
    """
    r = np.asarray(radii, np.float64)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    pix = np.stack([xs, ys, np.ones_like(xs)], -1).reshape(-1, 3)
    imgs, msks, deps = [], [], []
    for v in range(len(c2w)):
        d_cam = pix @ np.linalg.inv(K[v].astype(np.float64)).T          # z = 1 in camera coordinates
        R, o = c2w[v, :3, :3].astype(np.float64), c2w[v, :3, 3].astype(np.float64)
        d = d_cam @ R.T
        # Solve |(o + t d) / r|^2 = 1 for t.
        a = ((d / r) ** 2).sum(1)
        b = 2 * ((o / r**2) * d).sum(1)
        c = ((o / r) ** 2).sum() - 1
        disc = b * b - 4 * a * c
        hit = disc > 0
        t = np.where(hit, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)
        hit &= t > 0
        X = o + t[:, None] * d
        n = X / r**2
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        stripes = 0.5 + 0.5 * np.sin(12.0 * X[:, 0] + phase)
        base = np.stack([0.55 + 0.4 * stripes, 0.3 + 0.5 * (0.5 + 0.5 * n[:, 2]), 0.25 + 0.6 * (0.5 + 0.5 * n[:, 1])], 1)
        shade = 0.45 + 0.55 * np.clip(n @ np.array([0.3, -0.4, 0.85]) / np.linalg.norm([0.3, -0.4, 0.85]), 0, 1)
        col = np.where(hit[:, None], np.clip(base * shade[:, None], 0, 1), background)
        imgs.append((col.reshape(size, size, 3) * 255 + 0.5).astype(np.uint8))
        msks.append((hit.reshape(size, size) * 255).astype(np.uint8))
        deps.append(np.where(hit, t, 0.0).reshape(size, size).astype(np.float32))  # d has camera z = 1, so t = z
    return np.stack(imgs), np.stack(msks), np.stack(deps)


def toy_K(size: int, num_views: int, fov_deg: float = 30.0) -> np.ndarray:
    """[V, 3, 3] pinhole intrinsics with the principal point at the image centre (corner origin)."""
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float32)
    return np.repeat(K[None], num_views, 0)


def write_toy_shard(path: str | os.PathLike, kind: str = "synthetic", num_samples: int = 2, num_views: int = 32,
                    size: int = 32, session: str = "toy", view_valid: np.ndarray | None = None) -> Path:
    """A tiny shard of ray-traced ellipsoids through ``ShardWriter`` (tests, benchmarks, smoke runs).

    Sample i has texture phase 0.3 * i (consecutive frames differ slightly) and frame_index i.
    ``view_valid`` bool [num_samples, num_views] marks views as failed QC.
    """
    from workflow_scripts.shards import ShardWriter

    c2w = toy_views(num_views)
    K = toy_K(size, num_views)
    with ShardWriter(path, kind=kind, num_views=num_views, image_size=size, params={"toy": True, "size": size}) as w:
        for i in range(num_samples):
            img, msk, dep = render_toy_ellipsoid(c2w, K, size, phase=0.3 * i)
            w.add(images=img, masks=msk, K=K, c2w=c2w, frame_index=i,
                  session="synthetic" if kind == "synthetic" else session,
                  view_valid=None if view_valid is None else view_valid[i],
                  depth=dep if kind == "synthetic" else None)
    return Path(path)
