import av
import numpy as np
import pytest
import torch
from PIL import Image

from distill.data.video import (
    CLIP_MEAN,
    CLIP_STD,
    VideoError,
    clip4clip_frame_indices,
    load_frames,
    load_segments,
    normalize,
    pad_clip,
    preprocess,
    probe_video,
    read_clip,
    resize_crop,
    segment_frame_indices,
)


def write_video(path, n_frames, fps=4, width=64, height=48):
    """Solid-colour H.264 clip whose frame i has red = 8*i, green = 255 - 8*i, blue = 128."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "0"}  # near-lossless: colours come back within ~1 level after yuv420p
        for i in range(n_frames):
            img = np.empty((height, width, 3), np.uint8)
            img[...] = (8 * i, 255 - 8 * i, 128)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def encoded_indices(frames):
    """The frame index each decoded uint8 [k, H, W, 3] frame carries in its red channel."""
    return (frames[..., 0].double().mean(dim=(1, 2)) / 8).round().long().tolist()


@pytest.fixture(scope="module")
def video_8s(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", n_frames=32)


def test_indices_29_97_fps_truncates_and_includes_last_second():
    assert clip4clip_frame_indices(899, 29.97, 100) == list(range(0, 871, 29))
    assert len(clip4clip_frame_indices(899, 29.97, 100)) == 31


def test_indices_one_per_second():
    assert clip4clip_frame_indices(32, 4.0, 12) == [0, 4, 8, 12, 16, 20, 24, 28]
    # 33 frames: ceil(33/4) = 9 s, so the inclusive end second 8 reaches frame 32.
    assert clip4clip_frame_indices(33, 4.0, 12) == [0, 4, 8, 12, 16, 20, 24, 28, 32]


def test_indices_slice_framepos():
    assert clip4clip_frame_indices(32, 4.0, 3, slice_framepos=0) == [0, 4, 8]
    assert clip4clip_frame_indices(32, 4.0, 3, slice_framepos=1) == [20, 24, 28]
    # linspace(0, 7, 3) = [0, 3.5, 7] floored to positions [0, 3, 7].
    assert clip4clip_frame_indices(32, 4.0, 3, slice_framepos=2) == [0, 12, 28]
    # linspace(0, 7, 5) = [0, 1.75, 3.5, 5.25, 7] -> [0, 1, 3, 5, 7].
    assert clip4clip_frame_indices(32, 4.0, 5) == [0, 4, 12, 20, 28]


def test_indices_framerate_2():
    assert clip4clip_frame_indices(12, 4.0, 100, framerate=2) == [0, 2, 4, 6, 8, 10]
    # fps 5: step 2, offsets range(0, 5, 2)[:2] = [0, 2].
    assert clip4clip_frame_indices(11, 5.0, 100, framerate=2) == [0, 2, 5, 7, 10]


def test_indices_short_and_degenerate_videos():
    assert clip4clip_frame_indices(3, 30.0, 12) == [0]
    assert clip4clip_frame_indices(1, 25.0, 12) == [0]
    assert clip4clip_frame_indices(0, 30.0, 12) == []
    # fps below framerate: one frame per source frame instead of CLIP4Clip's assertion failure.
    assert clip4clip_frame_indices(4, 2.0, 12, framerate=4) == [0, 1, 2, 3]
    assert clip4clip_frame_indices(3, 0.5, 12) == [0, 1, 2]


def test_load_frames_returns_the_sampled_source_frames(video_8s):
    frames = load_frames(video_8s, max_frames=12)
    assert frames.dtype == torch.uint8 and frames.shape == (8, 48, 64, 3)
    assert encoded_indices(frames) == [0, 4, 8, 12, 16, 20, 24, 28]

    frames = load_frames(video_8s, max_frames=3, framerate=2, slice_framepos=2)
    assert encoded_indices(frames) == clip4clip_frame_indices(32, 4.0, 3, framerate=2) == [0, 14, 30]


def test_segments_cut_the_sampled_frames_by_second(video_8s):
    """An 8 s video at 4 fps in 3 s segments: [0, 3), [3, 6), [6, 8] (the last second CLIP4Clip samples is
    inclusive, but frame 32 does not exist); each segment keeps the frames of its seconds, thinned alone."""
    assert segment_frame_indices(32, 4.0, 3, 12) == [(0, [0, 4, 8]), (3, [12, 16, 20]), (6, [24, 28])]
    assert segment_frame_indices(32, 4.0, 3, 2, framerate=2) == [(0, [0, 10]), (3, [12, 22]), (6, [24, 30])]
    spans, segments, duration = load_segments(video_8s, 3, max_frames=4, size=16)
    assert spans == [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0)] and duration == 8.0
    assert [tuple(s.shape) for s in segments] == [(3, 3, 16, 16), (3, 3, 16, 16), (2, 3, 16, 16)]
    frames = resize_crop(load_frames(video_8s, max_frames=12), 16)  # all 8 sampled frames
    assert torch.equal(torch.cat(segments), frames)
    # 29.97 fps: a second is 29 frames as CLIP4Clip counts them, so a segment's span is 29/29.97 s a second.
    assert segment_frame_indices(300, 29.97, 5, 12)[1] == (5, [145, 174, 203, 232, 261])


def test_one_segment_is_the_clip_read_clip_reads(video_8s):
    spans, segments, _ = load_segments(video_8s, None, max_frames=5, size=16, slice_framepos=0)
    video, mask = pad_clip(normalize(segments[0]), 5)  # what distill.retrieval.embed feeds the model
    clip, clip_mask = read_clip(video_8s, max_frames=5, size=16, slice_framepos=0)
    assert spans == [(0.0, 8.0)] and torch.equal(video, clip) and torch.equal(mask, clip_mask)


def test_preprocess_shape_and_normalisation():
    colour = (200, 100, 30)
    frames = torch.tensor(colour, dtype=torch.uint8).expand(5, 48, 64, 3).contiguous()
    out = preprocess(frames, 32)
    assert out.dtype == torch.float32 and out.shape == (5, 3, 32, 32)
    expected = [(c / 255 - m) / s for c, m, s in zip(colour, CLIP_MEAN, CLIP_STD)]
    torch.testing.assert_close(out, torch.tensor(expected).view(1, 3, 1, 1).expand_as(out))


def pil_reference(img, size):
    """CLIP's PIL transform: Resize(size, BICUBIC) on the short side, then CenterCrop(size)."""
    h, w = img.shape[:2]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    resized = np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.BICUBIC))
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    return resized[top : top + size, left : left + size]


@pytest.mark.parametrize("shape, size", [((61, 97), 32), ((97, 61), 40), ((240, 320), 224)])
def test_preprocess_matches_pil_bicubic(shape, size):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)  # noise: the hardest case for resampling
    out = preprocess(torch.from_numpy(imgs), size)
    std, mean = torch.tensor(CLIP_STD).view(1, 3, 1, 1), torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    levels = ((out * std + mean) * 255).round().permute(0, 2, 3, 1).numpy()
    ref = np.stack([pil_reference(img, size) for img in imgs]).astype(np.float64)
    diff = np.abs(levels - ref)
    # Measured (torch 2.14.1, torchvision 0.29.1, Pillow 13.0): max 1 level on these inputs, mean 0.004-0.006
    # levels; other noise images reached 2 levels on a 240x320 -> 224 resize.
    assert diff.max() <= 2
    assert diff.mean() < 0.05


def test_pad_clip_masks_real_frames():
    frames = torch.randn(3, 3, 8, 8)
    padded, mask = pad_clip(frames, 5)
    assert padded.shape == (5, 3, 8, 8)
    assert mask.dtype == torch.long and mask.tolist() == [1, 1, 1, 0, 0]
    assert torch.equal(padded[:3], frames) and not padded[3:].any()
    with pytest.raises(ValueError, match="max_frames=2"):
        pad_clip(frames, 2)


def test_read_clip_short_video(tmp_path):
    path = write_video(tmp_path / "short.mp4", n_frames=10)  # 2.5 s at 4 fps -> frames 0, 4, 8
    frames, mask = read_clip(path, max_frames=6, size=32)
    assert frames.shape == (6, 3, 32, 32) and frames.dtype == torch.float32
    assert mask.tolist() == [1, 1, 1, 0, 0, 0]
    assert not frames[3:].any() and frames[:3].abs().sum(dim=(1, 2, 3)).min() > 0


def test_read_clip_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(VideoError, match="not found") as e:
        read_clip(missing, max_frames=4, size=32)
    assert str(missing) in str(e.value)

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (garbage, empty):
        with pytest.raises(VideoError) as e:
            read_clip(path, max_frames=4, size=32)
        assert str(path) in str(e.value)


# The PyAV backend and decord's edit-list trap


def test_pyav_backend_reads_the_same_frames(video_8s):
    decord_frames = load_frames(video_8s, max_frames=5)
    pyav_frames = load_frames(video_8s, max_frames=5, backend="pyav")
    assert pyav_frames.dtype == torch.uint8 and pyav_frames.shape == decord_frames.shape == (5, 48, 64, 3)
    assert encoded_indices(pyav_frames) == encoded_indices(decord_frames) == [0, 4, 12, 20, 28]
    assert (pyav_frames.int() - decord_frames.int()).abs().max() <= 2  # two FFmpeg builds convert yuv -> rgb
    assert probe_video(video_8s, "pyav") == probe_video(video_8s) == (32, 4.0)


def trim_by_stream_copy(source, target, start_frame, keyframe, fps=4):
    """What `ffmpeg -ss <t> -c copy` does: keep the packets from the keyframe before the cut, shifted so the
    cut is at time 0; the muxer hides the leading (negative-time) frames behind an MP4 edit list."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        shift = round(start_frame / fps / stream.time_base)
        for packet in src.demux(stream):
            if packet.dts is None or packet.pts < round(keyframe / fps / stream.time_base):
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out
            dst.mux(packet)
    return target


@pytest.fixture(scope="module")
def edit_list_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit_list")
    source = folder / "full.mp4"
    with av.open(str(source), "w") as container:  # frame i has red = 8*i; a keyframe every 8 frames
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "0", "g": "8", "keyint_min": "8", "sc_threshold": "0", "bf": "0"}
        for i in range(32):
            img = np.empty((48, 64, 3), np.uint8)
            img[...] = (8 * i, 255 - 8 * i, 128)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    return trim_by_stream_copy(source, folder / "trimmed.mp4", start_frame=11, keyframe=8)


def test_edit_list_trap_is_real(edit_list_video):
    """decord counts the 3 hidden frames (negative timestamps) and returns repeated frames for its 24 indices."""
    decord = pytest.importorskip("decord")
    vr = decord.VideoReader(str(edit_list_video), num_threads=1)
    assert len(vr) == 24 and vr.get_frame_timestamp(0)[0] < 0
    read = encoded_indices(torch.from_numpy(vr.get_batch(list(range(24))).asnumpy()))
    assert len(set(read)) < 24


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_edit_list_video_reads_the_presented_frames(edit_list_video, backend):
    """21 presented frames (source frames 11..31) at 4 fps: CLIP4Clip keeps 0, 4, ..., 20 of them."""
    assert probe_video(edit_list_video, backend) == (21, 4.0)
    frames = load_frames(edit_list_video, max_frames=12, backend=backend)
    assert encoded_indices(frames) == [11, 15, 19, 23, 27, 31]


def write_rotated_video(path, degrees, n_frames=8, fps=4):
    """A 64x32 clip stored unturned with a display matrix saying "turn `degrees` counter-clockwise" (what a
    phone held upright records); the picture has red, green and blue corners and grey elsewhere."""
    image = np.full((32, 64, 3), 128, np.uint8)
    image[:16, :16], image[:16, -16:], image[-16:, :16] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.options = {"crf": "0"}
        stream.set_display_rotation(degrees)
        for _ in range(n_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return image


@pytest.mark.parametrize("degrees", [0, 90, 180, -90])
def test_both_backends_apply_rotation_metadata(tmp_path, degrees):
    path = tmp_path / f"rotated_{degrees}.mp4"
    image = write_rotated_video(path, degrees)
    upright = torch.from_numpy(np.rot90(image, degrees // 90).copy())  # np.rot90 turns counter-clockwise
    assert upright.shape == ((32, 64, 3) if degrees in (0, 180) else (64, 32, 3))
    decord_frames = load_frames(path, max_frames=2)
    pyav_frames = load_frames(path, max_frames=2, backend="pyav")
    assert decord_frames.shape == pyav_frames.shape == (2, *upright.shape)
    for frames in (decord_frames, pyav_frames):
        assert (frames.int() - upright.int()).abs().float().mean() < 2
    assert (pyav_frames.int() - decord_frames.int()).abs().max() <= 2


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_a_long_video_is_decoded_a_group_of_frames_at_a_time(video_8s, backend, monkeypatch):
    """Frames decoded three at a time and resized as they come give what one decode of all of them gives."""
    import distill.data.video as video

    whole = load_segments(video_8s, 3, max_frames=4, size=16, backend=backend)
    monkeypatch.setattr(video, "DECODE_GROUP", 3)
    grouped = load_segments(video_8s, 3, max_frames=4, size=16, backend=backend)
    assert grouped[0] == whole[0] and all(torch.equal(a, b) for a, b in zip(grouped[1], whole[1]))
