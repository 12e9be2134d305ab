"""Put a student to work: embed videos and captions from Python, index a folder of videos (whole or in
segments), search it by caption and by video through the CLIs, exactly or with FAISS, and as a results
page; incremental re-indexing and resuming after a kill; broken files listed, never embedded; an index never
searched in another model's space."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import student_config

from distill.core.schema import SyntheticConfig
from distill.data.formats import read_jsonl
from distill.data.synthetic import generate_synthetic
from distill.data.video import load_segments, normalize, pad_clip, read_clip
from distill.retrieval.embed import embed_texts, embed_videos
from distill.retrieval.index import main as index_main
from distill.retrieval.index import read_index
from distill.retrieval.search import main as search_main
from distill.retrieval.search import top_k
from students import Student, export_student, load_student
from students.model import Preprocessing, preprocessing_of
from teachers import CLIP4Clip, tokenize
from teachers.archs import clip4clip_arch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six real clips, two of them in a subfolder, a broken file and a text file that is no video."""
    root = generate_synthetic(
        tmp_path_factory.mktemp("index") / "data",
        SyntheticConfig(num_train=6, num_test=1, size=32, fps=4, seconds=2, seed=5),
    )
    pairs = read_jsonl(root / "train.jsonl", root, root).pairs
    folder = root.parent / "videos"
    (folder / "deep").mkdir(parents=True)
    for i, pair in enumerate(pairs):
        shutil.copy(pair.video, folder / ("deep" if i >= 4 else "") / f"clip{i}.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("ignored")
    return folder, [pair.caption for pair in pairs]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A random tiny student, exported as training exports one (fp32: compared within fp16 rounding)."""
    torch.manual_seed(0)
    config = student_config(max_frames=2)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    preprocessing = {"max_frames": 2, "image_size": 16, "max_words": 16, "framerate": 1, "slice_framepos": 2}
    export_student(Student(config, max_words=16), path, {"preprocessing": json.dumps(preprocessing)})
    return path


def test_embed_videos_and_texts_read_as_the_model_was_trained(clips, student):
    folder, captions = clips
    model = load_student(student)
    paths = [folder / "clip0.mp4", folder / "broken.mp4", folder / "clip1.mp4"]
    found = embed_videos(model, paths, batch_size=2)
    assert found.paths == [str(paths[0]), str(paths[2])] and list(found.failed) == [str(paths[1])]
    video, mask = read_clip(paths[2], max_frames=2, size=16)
    with torch.no_grad():
        torch.testing.assert_close(found.embeddings[1], model.encode_video(video[None], mask[None])[0])
        ids, attention = tokenize(captions[:3], 16)
        torch.testing.assert_close(embed_texts(model, captions[:3]), model.encode_text(ids, attention))
    assert torch.allclose(found.embeddings.norm(dim=1), torch.ones(2))


def test_a_model_built_here_reads_as_its_config_says(clips, student):
    """Without an export's preprocessing: a student from its config, a teacher from its input size and
    CLIP4Clip's defaults."""
    folder, _ = clips
    built = Student(load_student(student).config, max_words=16).eval()
    assert preprocessing_of(built) == Preprocessing(max_frames=2, image_size=16, max_words=16)
    teacher = CLIP4Clip(clip4clip_arch("test_tiny", "seqTransf")).eval()
    assert preprocessing_of(teacher) == Preprocessing(max_frames=12, image_size=16, max_words=16)
    assert embed_videos(teacher, [folder / "clip0.mp4"]).embeddings.shape == (1, 128)


def test_a_teacher_trained_here_is_read_as_its_recipe_says(clips, tmp_path, capsys):
    """The teacher stage's export records its recipe: the index samples clips as the teacher was trained."""
    from distill.core.config import recipe_to_dict
    from distill.recipe import load_recipe
    from distill.retrieval.encoders import load_encoder
    from teachers import save_teacher

    changes = ["teacher.max_frames=5", "data.max_words=20", "data.framerate=2", "data.slice_framepos=0"]
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "demo.yaml", changes)
    teacher = CLIP4Clip(clip4clip_arch("test_tiny", "meanP")).eval()
    save_teacher(teacher, tmp_path / "trained.safetensors", recipe=json.dumps(recipe_to_dict(recipe)))
    save_teacher(teacher, tmp_path / "given.safetensors")
    encoder, record = load_encoder(str(tmp_path / "trained.safetensors"))
    assert encoder.preprocessing == Preprocessing(
        max_frames=5, image_size=16, max_words=20, framerate=2, slice_framepos=0
    )
    assert load_encoder(str(tmp_path / "given.safetensors"))[0].preprocessing == preprocessing_of(teacher)
    assert record["kind"] == "teacher" and record["space"] == f"teacher:{record['sha256']}"
    # The same weights read otherwise: not the same index.
    folder = clips[0]
    assert index_main([str(tmp_path / "trained.safetensors"), str(folder), "--out", str(tmp_path / "index")]) == 0
    assert index_main([str(tmp_path / "given.safetensors"), str(folder), "--out", str(tmp_path / "index")]) == 2
    assert f"{tmp_path / 'index'} was built reading clips as" in capsys.readouterr().err


def index(student, folder, out, capsys) -> str:
    assert index_main([str(student), str(folder), "--out", str(out)]) == 0
    return capsys.readouterr().out


def test_index_then_search_by_caption_and_by_video(clips, student, tmp_path, capsys):
    folder, captions = clips
    out = tmp_path / "index"
    log = index(student, folder, out, capsys)
    assert f"index {out}: 6 videos embedded, 0 resumed, 0 kept, 0 dropped, 1 could not be read" in log
    info, entries, embeddings = read_index(out)
    assert info["count"] == 6 and embeddings.dtype == torch.float16 and embeddings.shape == (6, 32)
    assert {e["path"] for e in entries} == {str(p) for p in folder.rglob("*.mp4")} - {str(folder / "broken.mp4")}
    assert (out / "failed.txt").read_text().startswith(f"{folder / 'broken.mp4'}\t")
    # Stored in float16: within its rounding of unit vectors (2^-11 relative).
    model = load_student(student)
    exact = embed_videos(model, [e["path"] for e in entries]).embeddings
    torch.testing.assert_close(embeddings.float(), exact, rtol=0, atol=1e-3)

    assert search_main([str(out), captions[2], "--top", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    scores = embeddings.float() @ embed_texts(model, [captions[2]])[0]
    assert [h["path"] for h in hits] == [entries[i]["path"] for i in scores.argsort(descending=True)[:3]]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    assert search_main([str(out), "--video", str(folder / "deep" / "clip5.mp4"), "--top", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[:2] == ["| rank | score | path | start (s) | end (s) |", "|---:|---:|---|---:|---:|"]
    assert table[2].startswith("| 1 | 1.0") and table[2].endswith(f"| {folder / 'deep' / 'clip5.mp4'} | 0.0 | 2.0 |")


def test_search_over_several_shards_ranks_as_the_whole_gallery_and_names_a_damaged_index(
    clips, student, tmp_path, capsys, monkeypatch
):
    """Six entries in shards of four rows: the CLI's search, which reads a shard at a time and parses only its
    hits' entries, ranks as the whole gallery does; an entries file or a count that disagrees with the
    shards stops it, naming the file."""
    import distill.retrieval.index as index_module

    folder, captions = clips
    out = tmp_path / "index"
    monkeypatch.setattr(index_module, "SHARD_ROWS", 4)
    index(student, folder, out, capsys)
    info, entries, embeddings = read_index(out)
    assert len(info["shards"]) == 2 and embeddings.shape == (6, 32)
    assert search_main([str(out), captions[1], "--top", "6", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    scores = embeddings.float() @ embed_texts(load_student(student), [captions[1]])[0]
    assert [h["path"] for h in hits] == [entries[i]["path"] for i in scores.argsort(descending=True)]

    lines = (out / "entries.jsonl").read_text().splitlines(keepends=True)
    (out / "entries.jsonl").write_text("".join(lines[:-1]))
    assert search_main([str(out), captions[1]]) == 2
    assert f"{out / 'entries.jsonl'}: 5 entries for 6 embeddings; rebuild the index" in capsys.readouterr().err
    (out / "index.json").write_text(json.dumps({**info, "count": 5}))
    assert search_main([str(out), captions[1]]) == 2
    assert f"{out / 'index.json'}: count 5, but its shards hold 6 embeddings" in capsys.readouterr().err


def test_a_second_run_embeds_only_new_or_changed_files_and_drops_deleted_ones(clips, student, tmp_path, capsys):
    source, _ = clips
    folder = tmp_path / "videos"
    shutil.copytree(source, folder)
    out = tmp_path / "index"
    index(student, folder, out, capsys)
    _, _, before = read_index(out)
    assert "0 videos embedded, 0 resumed, 6 kept, 0 dropped" in index(student, folder, out, capsys)
    (folder / "clip0.mp4").unlink()
    shutil.copy(folder / "clip1.mp4", folder / "deep" / "new.mp4")
    stat = (folder / "clip2.mp4").stat()
    os.utime(folder / "clip2.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: embedded again
    assert "2 videos embedded, 0 resumed, 4 kept, 1 dropped, 1 could not be read" in index(student, folder, out, capsys)
    _, entries, after = read_index(out)
    paths = [e["path"] for e in entries]
    assert str(folder / "clip0.mp4") not in paths and str(folder / "deep" / "new.mp4") in paths
    assert torch.equal(
        after[paths.index(str(folder / "deep" / "new.mp4"))], after[paths.index(str(folder / "clip1.mp4"))]
    )  # the same clip, the same row


def test_an_index_is_never_searched_or_extended_with_another_model(clips, student, tmp_path, capsys):
    folder, _ = clips
    out = tmp_path / "index"
    index(student, folder, out, capsys)
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    export_student(Student(load_student(student).config, max_words=16), other)
    assert index_main([str(other), str(folder), "--out", str(out)]) == 2
    assert f"{out} was built with another model ({student.resolve()}" in capsys.readouterr().err
    info = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**info, "model": {**info["model"], "source": str(other)}}))
    assert search_main([str(out), "a circle"]) == 2
    assert "its embeddings are in another space; rebuild the index" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "no video files"),
        (lambda p: p.with_suffix(".txt").write_text("x"), "neither a folder of videos nor a .jsonl or .csv list"),
    ],
)
def test_an_empty_or_wrong_video_argument_is_named(student, tmp_path, capsys, make, message):
    path = tmp_path / "videos"
    make(path)
    target = path if path.exists() else path.with_suffix(".txt")
    assert index_main([str(student), str(target), "--out", str(tmp_path / "index")]) == 2
    assert message in capsys.readouterr().err
    assert search_main([str(tmp_path / "nowhere"), "a circle"]) == 2
    assert "not an index (no index.json)" in capsys.readouterr().err


def test_a_folder_that_is_not_an_index_is_never_replaced(clips, student, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert index_main([str(student), str(clips[0]), "--out", str(tmp_path / "mine")]) == 2
    assert f"{tmp_path / 'mine'} exists and is not an index" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_top_k_over_shards_in_chunks_equals_a_full_sort(monkeypatch):
    """Rows count on across shards of uneven sizes, each scored in chunks. The scores equal the whole
    gallery's within float32 rounding of an 8-term dot product (1e-6): a 1-row chunk and a 50-row one may
    take different BLAS kernels, which sum in another order."""
    import distill.retrieval.search as search_module

    monkeypatch.setattr(search_module, "CHUNK", 7)
    gallery = torch.nn.functional.normalize(torch.randn(50, 8), dim=1).half()
    query = torch.nn.functional.normalize(torch.randn(8), dim=0)
    full = gallery.float() @ query
    for shards in ([gallery], gallery.split([13, 30, 7]), gallery.split(1)):
        scores, rows = top_k(query, shards, 5)
        assert rows.tolist() == full.argsort(descending=True)[:5].tolist()
        torch.testing.assert_close(scores, full[rows], rtol=0, atol=1e-6)


def test_a_damaged_student_is_named_as_one_not_tried_as_a_teacher(clips, student, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from students import read_metadata

    tensors = load_file(student)
    tensors["frame_proj.bias"] = tensors["frame_proj.bias"] + 1
    damaged = tmp_path / "damaged.safetensors"
    save_file(tensors, str(damaged), metadata=read_metadata(student))
    assert index_main([str(damaged), str(clips[0]), "--out", str(tmp_path / "index")]) == 2
    assert f"error: {damaged}: the weights do not match the export's checksum" in capsys.readouterr().err


def test_long_videos_are_indexed_in_segments_with_their_spans(clips, student, tmp_path, capsys):
    folder, captions = clips
    out = tmp_path / "index"
    assert index_main([str(student), str(folder), "--out", str(out), "--segment", "1"]) == 0
    assert "6 videos embedded" in capsys.readouterr().out
    info, entries, embeddings = read_index(out)
    assert info["segment"] == 1 and info["count"] == 12  # 2 s clips: [0, 1) and [1, 2]
    first = [e for e in entries if e["path"] == str(folder / "clip0.mp4")]
    assert [(e["start"], e["end"], e["duration"]) for e in first] == [(0.0, 1.0, 2.0), (1.0, 2.0, 2.0)]
    model = load_student(student)
    _, segments, _ = load_segments(folder / "clip0.mp4", 1, max_frames=2, size=16)
    video, mask = (torch.stack(t) for t in zip(*(pad_clip(normalize(s), 2) for s in segments)))
    with torch.no_grad():
        exact = model.encode_video(video, mask)
    rows = [i for i, e in enumerate(entries) if e["path"] == str(folder / "clip0.mp4")]
    torch.testing.assert_close(embeddings[rows].float(), exact, rtol=0, atol=1e-3)  # float16 storage

    assert search_main([str(out), captions[0], "--top", "12", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((h["path"], h["start"], h["end"]) for h in hits) == sorted(
        (e["path"], e["start"], e["end"]) for e in entries
    )
    assert index_main([str(student), str(folder), "--out", str(out)]) == 2
    assert f"{out} holds segments of 1 s, not None s (--segment)" in capsys.readouterr().err


def test_a_csv_list_names_the_videos(clips, student, tmp_path, capsys):
    folder, _ = clips
    text = "\ufeffvideo,caption\nvideos/clip1.mp4,a\nvideos/deep/clip4.mp4,b\n"  # a byte-order mark, as Excel saves
    (folder.parent / "list.csv").write_text(text, encoding="utf-8")
    index(student, folder.parent / "list.csv", tmp_path / "index", capsys)
    _, entries, _ = read_index(tmp_path / "index")
    assert [e["path"] for e in entries] == [str(folder / "clip1.mp4"), str(folder / "deep" / "clip4.mp4")]


def test_a_killed_index_run_resumes_from_its_saved_chunks(clips, student, tmp_path, capsys):
    """Killed (SIGKILL) once some chunks of 8 videos are saved, then a file added: the next run embeds only
    the files no saved chunk holds, and the index equals one built in one go (batches of one video:
    bit-equal)."""
    source, _ = clips
    folder = tmp_path / "videos"
    folder.mkdir()
    for k in range(8):  # 48 videos: 6 chunks of 8 at batch size 1
        for clip in sorted(source.rglob("clip*.mp4")):
            shutil.copy(clip, folder / f"{k}-{clip.name}")
    out, work = tmp_path / "index", tmp_path / "index.work"
    command = [sys.executable, "-m", "distill.index", str(student), str(folder), "--out", str(out), "--batch-size", "1"]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    while not (work.is_dir() and any(work.glob("*.safetensors"))) and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = len(list(work.glob("*.safetensors")))
    assert 1 <= saved < 6 and not (out / "index.json").exists(), "the run ended before it could be killed"
    shutil.copy(source / "clip0.mp4", folder / "0-added.mp4")  # listed first: every later chunk shifts
    assert index_main([str(student), str(folder), "--out", str(out), "--batch-size", "1"]) == 0
    log = capsys.readouterr().out
    assert f"{49 - 8 * saved} videos embedded, {8 * saved} resumed, 0 kept" in log and not work.exists()
    assert index_main([str(student), str(folder), "--out", str(tmp_path / "whole"), "--batch-size", "1"]) == 0
    _, entries, embeddings = read_index(out)
    _, whole_entries, whole = read_index(tmp_path / "whole")
    assert entries == whole_entries and torch.equal(embeddings, whole)


def test_faiss_search_with_every_cell_probed_is_exact_search():
    from distill.retrieval import ann

    gallery = torch.nn.functional.normalize(torch.randn(3000, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    faiss_index = ann.build(gallery.half())
    assert faiss_index.nlist == 55 and faiss_index.ntotal == 3000
    query = torch.nn.functional.normalize(torch.randn(16), dim=0)
    exact_scores, exact_rows = top_k(query, [gallery.half()], 10)
    scores, rows = ann.top_k(faiss_index, query, 10, nprobe=55)
    assert rows.tolist() == exact_rows.tolist()
    # FAISS scores the float16 vectors in float32 as exact search does, summed in another order.
    torch.testing.assert_close(scores, exact_scores, rtol=0, atol=1e-5)
    scores, rows = ann.top_k(faiss_index, query, 10, nprobe=1)  # fewer cells: maybe fewer right, scores exact
    torch.testing.assert_close(scores, gallery.half()[rows].float() @ query, rtol=0, atol=1e-5)


def test_an_index_with_faiss_searches_as_exact_search(clips, student, tmp_path, capsys):
    folder, captions = clips
    out = tmp_path / "index"
    assert index_main([str(student), str(folder), "--out", str(out), "--faiss"]) == 0
    capsys.readouterr()
    assert json.loads((out / "index.json").read_text())["faiss"] == "faiss.index" and (out / "faiss.index").is_file()
    found = {}
    for how in ([], ["--exact"]):
        assert search_main([str(out), captions[1], "--top", "4", "--json", *how]) == 0
        found[bool(how)] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["path"] for h in found[True]] == [h["path"] for h in found[False]]
    (out / "faiss.index").unlink()  # the approximate search reads it; the exact one does not
    assert search_main([str(out), captions[1]]) == 2
    assert f"{out}: its faiss.index is missing; rebuild the index or use --exact" in capsys.readouterr().err
    assert search_main([str(out), captions[1], "--exact"]) == 0
    from distill.retrieval import ann

    _, _, embeddings = read_index(out)  # a FAISS index of another gallery: its rows would name other entries
    ann.save(ann.build(embeddings[:4]), out / "faiss.index")
    assert search_main([str(out), captions[1]]) == 2
    assert f"{out / 'faiss.index'}: 4 vectors for 6 entries; rebuild the index" in capsys.readouterr().err


def test_the_results_page_shows_each_hit_with_its_sampled_frames(clips, student, tmp_path, capsys):
    import base64
    import io
    import re

    from PIL import Image

    folder, captions = clips
    out = tmp_path / "index"
    index(student, folder, out, capsys)
    page = tmp_path / "results.html"
    assert search_main([str(out), "a <red> circle & more", "--top", "3", "--html", str(page), "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    text = page.read_text()
    assert "a &lt;red&gt; circle &amp; more" in text and text.count('class="hit"') == 3
    assert all(text.index(h["path"]) < text.index(hits[i + 1]["path"]) for i, h in enumerate(hits[:-1]))
    images = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(images) == 3 * 2  # 2 s clips sampled at 1 frame a second: 2 frames a hit
    image = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert image.format == "JPEG" and image.size == (96, 96)  # square 32 px clips, 96 px high
    # Each hit is shown by its path below the folder that was indexed (which the index records), not by the
    # absolute path of the machine that built it; the link still opens the file.
    assert json.loads((out / "index.json").read_text())["videos"] == str(folder.resolve())
    shown = re.findall(r'<a href="([^"]+)">([^<]+)</a>', text)
    assert [name for _, name in shown] == [Path(h["path"]).relative_to(folder.resolve()).as_posix() for h in hits]
    assert [link for link, _ in shown] == [Path(h["path"]).as_uri() for h in hits]


def test_the_results_page_names_hits_of_a_list_below_the_lists_folder(clips, student, tmp_path, capsys):
    """A list's entries are shown below the list's folder; one that lies elsewhere by its whole path."""
    folder, _ = clips
    (tmp_path / "set" / "a").mkdir(parents=True)
    shutil.copy(folder / "clip0.mp4", tmp_path / "set" / "a" / "mine.mp4")
    listed = tmp_path / "set" / "list.jsonl"
    elsewhere = (folder / "deep" / "clip4.mp4").resolve()
    listed.write_text(json.dumps({"video": "a/mine.mp4"}) + "\n" + json.dumps({"video": str(elsewhere)}) + "\n")
    out = tmp_path / "index"
    assert index_main([str(student), str(listed), "-o", str(out)]) == 0
    page = tmp_path / "results.html"
    assert search_main([str(out), "a circle", "--top", "2", "--html", str(page)]) == 0
    assert json.loads((out / "index.json").read_text())["videos"] == str((tmp_path / "set").resolve())
    text = page.read_text()
    assert ">a/mine.mp4</a>" in text and f">{elsewhere}</a>" in text


def test_a_student_with_the_teachers_text_tower_shares_its_space_and_no_other(clips, student, tmp_path, capsys):
    """Teacher queries search a gallery its text=teacher student embedded, and a gallery of both models'
    embeddings; a student with its own text tower is refused, as a query model and as a gallery."""
    from students import teacher_text_tower
    from teachers import save_teacher
    from teachers.export import teacher_sha256

    folder, captions = clips
    torch.manual_seed(2)
    teacher = CLIP4Clip(clip4clip_arch("test_tiny", "meanP")).eval()
    save_teacher(teacher, tmp_path / "teacher.safetensors")
    sizes, weights = teacher_text_tower(teacher, 16)
    twin = Student(
        student_config(max_frames=2, text="teacher", embed_dim=teacher.embed_dim), max_words=16, teacher_text=sizes
    )
    twin.text.load_state_dict(weights)
    space = {"embedding_space": f"teacher:{teacher_sha256(teacher)}"}  # as the export stage records it
    export_student(twin, tmp_path / "twin.safetensors", space)
    for model, out in (("teacher", "by_teacher"), ("twin", "by_twin"), (student, "by_own")):
        source = student if out == "by_own" else tmp_path / f"{model}.safetensors"
        index(source, folder, tmp_path / out, capsys)

    by_teacher, by_twin, by_own = (str(tmp_path / name) for name in ("by_teacher", "by_twin", "by_own"))
    command = [by_twin, captions[3], "--also", by_teacher, "--model", str(tmp_path / "teacher.safetensors")]
    assert search_main([*command, "--top", "12", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 12 and {h["index"] for h in hits} == {by_twin, by_teacher}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    assert search_main([by_twin, captions[3], "--model", str(student)]) == 2
    assert f"{student.resolve()} embeds in space student:" in capsys.readouterr().err
    assert search_main([by_twin, captions[3], "--also", by_own]) == 2
    assert (
        f"{by_own} ({student.resolve()}) and {by_twin} ({tmp_path / 'twin.safetensors'}) hold embeddings of "
        "different spaces" in capsys.readouterr().err
    )


def test_an_index_of_an_older_format_or_a_file_that_is_no_model_is_named(clips, student, tmp_path, capsys):
    folder, _ = clips
    old = tmp_path / "old"
    old.mkdir()
    (old / "index.json").write_text(json.dumps({"format": "clip4clip-distill/index", "count": 0}))
    assert search_main([str(old), "a circle"]) == 2
    assert f"{old}: an index of version 1, this is version 2; delete it and build it again" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a model")
    assert index_main([str(tmp_path / "notes.txt"), str(folder), "--out", str(tmp_path / "index")]) == 2
    assert f"{tmp_path / 'notes.txt'}" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_a_kill_while_an_index_is_replaced_never_loses_it(clips, student, tmp_path, capsys, monkeypatch):
    """The replacement of an index by a rebuild, killed at each of its file-system steps in turn (the k-th
    rename or folder deletion raises, as a kill there would end it): at every step a whole index is where
    search finds it (the old one or the new), and the next run puts it in place and finishes the rebuild."""
    from distill.retrieval.search import search

    source, captions = clips
    folder = tmp_path / "videos"
    shutil.copytree(source, folder)
    out = tmp_path / "index"
    steps, k = [], 0

    def killed_at(name, call):
        def step(*args, **kwargs):
            steps.append(name)
            if len(steps) == k:
                raise KeyboardInterrupt(f"killed at {name}")
            return call(*args, **kwargs)

        return step

    while True:
        k += 1
        shutil.rmtree(out, ignore_errors=True)
        index(student, folder, out, capsys)  # the old index: 6 videos
        shutil.copy(folder / "clip1.mp4", folder / "added.mp4")
        steps.clear()
        with monkeypatch.context() as patch:
            patch.setattr(os, "rename", killed_at("rename", os.rename))
            patch.setattr(shutil, "rmtree", killed_at("rmtree", shutil.rmtree))
            try:
                index_main([str(student), str(folder), "--out", str(out)])
            except KeyboardInterrupt:
                killed = True
            else:
                killed = False
        hits, infos = search([out], caption=captions[0], top=10)
        (info,) = infos.values()
        assert info["count"] in (6, 7) and len(hits) == info["count"], f"step {k} ({steps[-1]})"
        if not killed:
            break
        capsys.readouterr()
        index(student, folder, out, capsys)
        assert read_index(out)[0]["count"] == 7 and not list(tmp_path.glob("index.*")), f"after step {k}"
        (folder / "added.mp4").unlink()
    assert k >= 5  # the steps: clear the partial, move the old aside, the new in, delete the old
    assert not list(tmp_path.glob("index.*"))
