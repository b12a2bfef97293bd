"""Video I/O: write/read round trip, seeking/stride, image folders, corrupt inputs."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from workflow_scripts.errors import InputError
from workflow_scripts.video import iter_frames, keyframes_before, list_image_frames, probe_video, write_video

W, H, N = 64, 48, 20


def square_frames(n: int = N) -> list[np.ndarray]:
    """A 12x12 coloured square moving over a smooth gradient background."""
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 3, yy * 4, np.full_like(xx, 90)], axis=2).astype(np.uint8)
    out = []
    for i in range(n):
        f = base.copy()
        x0, y0 = 2 + 2 * i, 5 + i
        f[y0:y0 + 12, x0:x0 + 12] = (230, 40, 60)
        out.append(f)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("vid") / "square.mp4"
    assert write_video(path, iter(square_frames()), fps=Fraction(30000, 1001), gop=8) == N
    return path


def test_probe(video):
    info = probe_video(video)
    assert (info.width, info.height, info.num_frames) == (W, H, N)
    assert info.fps == Fraction(30000, 1001)
    assert info.codec == "h264"


def test_round_trip_quality(video):
    src = square_frames()
    got = list(iter_frames(video))
    assert [i for i, _ in got] == list(range(N))
    for (i, f), s in zip(got, src):
        assert f.shape == (H, W, 3) and f.dtype == np.uint8
        assert psnr(f, s) > 30, i


def test_start_stop_stride_match_sequential(video):
    full = dict(iter_frames(video))
    sub = list(iter_frames(video, start=3, stop=17, stride=4))
    assert [i for i, _ in sub] == [3, 7, 11, 15]
    for i, f in sub:
        np.testing.assert_array_equal(f, full[i])
    assert list(iter_frames(video, start=N)) == []
    assert [i for i, _ in iter_frames(video, start=18, stop=100)] == [18, 19]


def test_seek_path_matches_sequential(tmp_path):
    """start beyond the seek threshold uses container.seek; frames must equal plain decoding."""
    frames = [np.full((32, 32, 3), (i * 2) % 256, np.uint8) for i in range(120)]
    for i, f in enumerate(frames):
        f[: i % 32, :4] = 255  # make every frame distinct
    path = tmp_path / "long.mp4"
    write_video(path, frames, fps=25, gop=10)
    full = dict(iter_frames(path))
    assert len(full) == 120
    sub = list(iter_frames(path, start=77, stop=110, stride=5))
    assert [i for i, _ in sub] == list(range(77, 110, 5))
    for i, f in sub:
        np.testing.assert_array_equal(f, full[i])
        assert psnr(f, frames[i]) > 30
    # one decoder thread (run_masks' workers) decodes the same frames
    one = list(iter_frames(path, start=77, stop=110, stride=5, threads=1))
    assert [i for i, _ in one] == [i for i, _ in sub]
    for (_, a), (_, b) in zip(one, sub):
        np.testing.assert_array_equal(a, b)


def test_only_yields_just_those_frames(video):
    full = dict(iter_frames(video))
    got = list(iter_frames(video, start=2, stop=18, only=[17, 3, 9, 40]))
    assert [i for i, _ in got] == [3, 9, 17]
    for i, f in got:
        np.testing.assert_array_equal(f, full[i])


def test_keyframes_before_targets(video, tmp_path):
    """gop 8: frames 0, 8, 16 are keyframes; each target maps to the one at or before it, decoded
    alone exactly as in a full decode; duplicates merge; an image folder returns the targets."""
    full = dict(iter_frames(video))
    got = keyframes_before(video, [3, 9, 15, 19, 8])
    assert [i for i, _ in got] == [0, 8, 16]
    for i, f in got:
        np.testing.assert_array_equal(f, full[i])
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(square_frames(5)):
        Image.fromarray(f).save(folder / f"{i}.png")
    got = keyframes_before(folder, [4, 1, 1])
    assert [i for i, _ in got] == [1, 4]
    np.testing.assert_array_equal(got[1][1], square_frames(5)[4])


def test_mkv_counts_frames_without_header_count(tmp_path):
    path = tmp_path / "v.mkv"
    write_video(path, square_frames(7), fps=25)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # Matroska does not store the count
    assert probe_video(path).num_frames == 7
    assert len(list(iter_frames(path))) == 7


def test_gray_frames_and_atomic_output(tmp_path):
    path = tmp_path / "m.mp4"
    write_video(path, [np.full((16, 16), 255 * (i % 2), np.uint8) for i in range(4)], fps=10)
    got = [f for _, f in iter_frames(path)]
    assert [int(f.mean() > 127) for f in got] == [0, 1, 0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mp4"]  # no temp file left
    with pytest.raises(ValueError):
        write_video(tmp_path / "odd.mp4", [np.zeros((15, 16, 3), np.uint8)], fps=10)
    assert not (tmp_path / "odd.mp4").exists()


def test_image_folder(tmp_path):
    src = square_frames(12)
    for i, f in enumerate(src):
        Image.fromarray(f).save(tmp_path / f"frame_{i}.png")  # natural sort: 2 before 10
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in list_image_frames(tmp_path)][:3] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    info = probe_video(tmp_path)
    assert (info.width, info.height, info.num_frames, info.fps) == (W, H, 12, None)
    got = list(iter_frames(tmp_path, start=1, stride=5))
    assert [i for i, _ in got] == [1, 6, 11]
    for i, f in got:
        np.testing.assert_array_equal(f, src[i])  # PNG is lossless


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.mp4.*not found"):
        probe_video(tmp_path / "nope.mp4")


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path)):
        probe_video(tmp_path)


def test_random_bytes(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="junk.mp4"):
        probe_video(path)
    with pytest.raises(InputError, match="junk.mp4"):
        list(iter_frames(path))


@pytest.mark.parametrize("keep", [0.4, 0.9])
def test_truncated_video(tmp_path, keep):
    rng = np.random.default_rng(1)  # noise compresses badly: each frame has real payload
    frames = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(N)]
    full = tmp_path / "full.mp4"
    write_video(full, frames, fps=30)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert probe_video(cut).num_frames == N  # the header (moov at front) still claims N
    with pytest.raises(InputError, match=r"cut\.mp4.*frame \d+") as exc:
        for _ in iter_frames(cut):
            pass
    assert "truncated" in str(exc.value) or "corrupt" in str(exc.value)


def test_truncated_header(tmp_path):
    full = tmp_path / "full.mp4"
    write_video(full, square_frames(), fps=30)
    cut = tmp_path / "head.mp4"
    cut.write_bytes(full.read_bytes()[:100])  # only part of the header survives
    with pytest.raises(InputError, match="head.mp4"):
        probe_video(cut)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_zero_frames(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    with av.open(str(path), "w") as out:  # header written, no frame ever encoded
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()
    assert path.exists()
    with pytest.raises(InputError, match=f"empty{suffix}"):
        probe_video(path)
    with pytest.raises(InputError, match=f"empty{suffix}"):
        list(iter_frames(path))


def test_image_folder_size_mismatch(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "0.png")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "1.png")
    with pytest.raises(InputError, match=r"1\.png.*10x8"):
        list(iter_frames(tmp_path))


def test_rgb_matches_pyav_to_ndarray(tmp_path):
    """iter_frames' one-context-per-stream RGB conversion gives PyAV's per-frame to_ndarray
    pixels bit for bit (a width whose RGB rows need padding included)."""
    rng = np.random.default_rng(1)
    path = tmp_path / "noisy.mp4"
    write_video(path, [rng.integers(0, 256, (36, 70, 3), dtype=np.uint8) for _ in range(6)], fps=10)
    with av.open(str(path)) as c:
        ref = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    got = [f for _, f in iter_frames(path)]
    assert len(got) == len(ref) == 6
    for a, b in zip(got, ref):
        assert a.shape == (36, 70, 3)
        np.testing.assert_array_equal(a, b)


def test_prefetched_yields_in_order_and_raises_here():
    from workflow_scripts.video import prefetched

    assert list(prefetched((i for i in range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise InputError("frame 2 is corrupt")

    got = []
    with pytest.raises(InputError, match="frame 2 is corrupt"):
        for x in prefetched(broken()):
            got.append(x)
    assert got == [1]


def test_prefetched_stops_and_closes_when_the_caller_stops(video):
    """Stopping early ends the thread and closes the source generator (its video file)."""
    import threading

    from workflow_scripts.video import prefetched

    closed = []

    def source():
        try:
            yield from iter_frames(video)
        finally:
            closed.append(True)

    it = prefetched(source(), depth=2)
    assert next(it)[0] == 0
    it.close()
    assert closed == [True]
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def _write_tagged(path, w: int, h: int, n: int = 4, codec: str = "libx264", pix_fmt: str = "yuv420p",
                  colorspace: int | None = None, color_range: int | None = None) -> None:
    """Noisy textured frames encoded with PyAV directly: any size, pixel format and colour tags."""
    rng = np.random.default_rng(w * h)
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=15)
        st.width, st.height, st.pix_fmt = w, h, pix_fmt
        if colorspace is not None:
            st.codec_context.colorspace = colorspace
        if color_range is not None:
            st.codec_context.color_range = color_range
        for _ in range(n):
            rgb = np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format=pix_fmt, dst_colorspace=colorspace, dst_color_range=color_range)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


# (name, width, height, codec, pix_fmt, colorspace, color_range, region conversion expected exact)
PLANAR_VIDEOS = [
    ("h264_470x398", 470, 398, "libx264", "yuv420p", None, None, True),  # width not a multiple of 16
    ("yuvj420p_full", 322, 242, "libx264", "yuvj420p", None, None, True),  # full (JPEG) range
    ("bt709_tv", 350, 260, "libx264", "yuv420p", 1, 1, True),  # BT.709 matrix, limited range
    ("bt709_pc", 350, 260, "libx264", "yuv420p", 1, 2, True),  # BT.709, full range (decodes as yuvj420p)
    ("ffv1_odd_width", 353, 262, "ffv1", "yuv420p", None, None, True),
    ("ffv1_odd_height", 354, 261, "ffv1", "yuv420p", None, None, False),  # swscale filters: whole frames
]


@pytest.mark.parametrize("name,w,h,codec,pix_fmt,cs,cr,exact", PLANAR_VIDEOS, ids=[v[0] for v in PLANAR_VIDEOS])
def test_planar_frames_give_the_rgb_of_iter_frames_bit_for_bit(tmp_path, caplog, monkeypatch,
                                                               name, w, h, codec, pix_fmt, cs, cr, exact):
    """iter_frames(planar=True) keeps 4:2:0 frames in their planes; their whole-frame RGB and the
    RGB of any region (odd offsets and sizes, edges, single pixels) equal iter_frames' pixels."""
    import logging

    import workflow_scripts.video as V

    monkeypatch.setattr(V, "_warned_inexact", set())
    path = tmp_path / f"{name}.{'mkv' if codec == 'ffv1' else 'mp4'}"
    _write_tagged(path, w, h, codec=codec, pix_fmt=pix_fmt, colorspace=cs, color_range=cr)
    ref = dict(iter_frames(path))
    rng = np.random.default_rng(5)
    n = 0
    with caplog.at_level(logging.WARNING, logger="workflow_scripts.video"):
        for i, f in iter_frames(path, planar=True):
            assert isinstance(f, V.YUV420Frame) and f.tags[:3] == (f.tags[0], w, h)
            assert f.y.shape == (h, w) and f.u.shape == f.v.shape == ((h + 1) // 2, (w + 1) // 2)
            if cs is not None:
                assert f.tags[3] == cs
            np.testing.assert_array_equal(f.rgb(), ref[i])
            regions = [(0, 0, w, h), (1, 1, w, h), (0, 0, 1, 1), (w - 1, h - 1, w, h), (3, 5, 130, 131),
                       (w - 129, h - 128, w - 1, h)]
            for _ in range(20):
                x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
                regions.append((x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))))
            for x0, y0, x1, y1 in regions:
                np.testing.assert_array_equal(f.rgb_region(x0, y0, x1, y1), ref[i][y0:y1, x0:x1])
                n += 1
            assert list(f._to_rgb._exact.values()) == [exact]  # the region route is really taken (or not)
    assert n == len(ref) * 26
    warned = [r for r in caplog.records if "cannot be converted to RGB exactly" in r.getMessage()]
    assert len(warned) == (0 if exact else 1)  # logged once per stream kind, not per frame


def test_planar_other_pixel_formats_stay_rgb(tmp_path):
    """A 4:2:2 video (and image folders) yield RGB arrays with planar=True, as without it."""
    path = tmp_path / "yuv422.mp4"
    _write_tagged(path, 96, 64, pix_fmt="yuv422p")
    ref = list(iter_frames(path))
    got = list(iter_frames(path, planar=True))
    assert [i for i, _ in got] == [i for i, _ in ref]
    for (_, a), (_, b) in zip(got, ref):
        assert isinstance(a, np.ndarray)
        np.testing.assert_array_equal(a, b)


def test_keyframes_before_planar(video):
    from workflow_scripts.video import YUV420Frame

    rgb = keyframes_before(video, [3, 9, 15, 19, 8])
    planar = keyframes_before(video, [3, 9, 15, 19, 8], planar=True)
    assert [i for i, _ in planar] == [i for i, _ in rgb]
    for (_, p), (_, r) in zip(planar, rgb):
        assert isinstance(p, YUV420Frame)
        np.testing.assert_array_equal(p.rgb(), r)
        np.testing.assert_array_equal(p.rgb_region(5, 7, 33, 40), r[7:40, 5:33])


def test_keyframes_decoded_together_equal_one_by_one(tmp_path, monkeypatch):
    """The keyframes decoded together by a frame-threaded decoder are the frames (planes,
    indices) each keyframe's packet gives alone, and what a full decode gives; when the joint
    decode does not give one frame per packet, each is decoded alone."""
    import workflow_scripts.video as video_mod

    path = tmp_path / "noisy.mp4"
    rng = np.random.default_rng(0)
    frames = [np.clip(f + rng.normal(0, 8, f.shape), 0, 255).astype(np.uint8) for f in square_frames(60)]
    write_video(path, iter(frames), fps=25, gop=6)  # B-frames between the keyframes
    targets = [0, 5, 13, 14, 20, 33, 47, 59]
    info = probe_video(path)
    joint = video_mod._decode_together
    results = []
    monkeypatch.setattr(video_mod, "_decode_together", lambda *a: results.append(joint(*a)) or results[-1])
    together = keyframes_before(path, targets, planar=True)
    assert len(results) == 1 and results[0] is not None  # decoded together
    alone = video_mod._keyframes_one_by_one(path, info, sorted(targets), planar=True)
    assert [i for i, _ in together] == [i for i, _ in alone]
    assert len(together) >= 6 and together[0][0] == 0  # (x264 adds keyframes at scene cuts)
    full = dict(iter_frames(path))
    for (i, a), (_, b) in zip(together, alone):
        for plane in "yuv":
            np.testing.assert_array_equal(getattr(a, plane), getattr(b, plane))
        np.testing.assert_array_equal(a.rgb(), full[i])
    calls = []
    monkeypatch.setattr(video_mod, "_decode_together", lambda packets, ctx: calls.append(len(packets)))
    fallback = keyframes_before(path, targets)
    assert calls == [len(targets)] and [i for i, _ in fallback] == [i for i, _ in together]
    for (i, f) in fallback:
        np.testing.assert_array_equal(f, full[i])


def test_region_outside_the_frame_raises(video):
    f = next(iter_frames(video, planar=True))[1]
    with pytest.raises(ValueError, match="not inside"):
        f.rgb_region(0, 0, W + 1, H)
    assert f.rgb_region(4, 4, 4, 9).shape == (5, 0, 3)
