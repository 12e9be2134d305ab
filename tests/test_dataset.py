import json
import shutil

import pytest
import torch

from distill.data.dataset import VideoTextDataset, View, read_annotations
from distill.data.synthetic import generate_synthetic
from distill.data.video import VideoError, load_frames, preprocess
from distill.recipe import SyntheticConfig
from teachers.tokenizer import tokenize

# 8 s at 4 fps: one frame a second gives 8 frames, enough for the teacher's 8.
CONFIG = SyntheticConfig(num_train=6, num_test=4, size=32, fps=4, seconds=8, seed=0)
VIEWS = {"teacher": View(8, 32), "student": View(4, 16)}
MAX_WORDS = 16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("dataset") / "demo", CONFIG)


@pytest.fixture(scope="module")
def train(root):
    return VideoTextDataset(root / "train.jsonl", root, VIEWS, max_words=MAX_WORDS)


def test_item_keys_and_shapes(train):
    assert len(train) == 6
    item = train[2]
    assert set(item) == {"index", "input_ids", "attention_mask", "teacher_video", "teacher_mask",
                         "student_video", "student_mask"}
    assert item["index"].item() == 2
    assert item["input_ids"].shape == item["attention_mask"].shape == (MAX_WORDS,)
    assert item["teacher_video"].shape == (8, 3, 32, 32) and item["teacher_video"].dtype == torch.float32
    assert item["student_video"].shape == (4, 3, 16, 16) and item["student_video"].dtype == torch.float32
    assert item["teacher_mask"].tolist() == [1] * 8
    assert item["student_mask"].tolist() == [1] * 4


def test_views_take_their_frames_from_one_decode(train):
    frames = load_frames(train.videos[1], max_frames=8)
    assert len(frames) == 8
    item = train[1]
    assert torch.equal(item["teacher_video"], preprocess(frames, 32))
    evenly_spaced = [0, 2, 4, 7]  # floored linspace(0, 7, 4)
    assert torch.equal(item["student_video"], preprocess(frames[evenly_spaced], 16))


def test_student_view_is_a_subset_of_the_teacher_decode(root):
    # Two frames a second: 16 candidates. The teacher decode keeps frames 0 4 8 12 16 20 24 30 and the
    # student takes 0 8 16 30 of those, where a decode of its own would have kept 0 10 20 30.
    dataset = VideoTextDataset(root / "train.jsonl", root, VIEWS, max_words=MAX_WORDS, framerate=2)
    teacher_decode = load_frames(dataset.videos[4], max_frames=8, framerate=2)
    item = dataset[4]
    assert torch.equal(item["teacher_video"], preprocess(teacher_decode, 32))
    assert torch.equal(item["student_video"], preprocess(teacher_decode[[0, 2, 4, 7]], 16))
    own_decode = load_frames(dataset.videos[4], max_frames=4, framerate=2)
    assert not torch.equal(item["student_video"], preprocess(own_decode, 16))


def test_short_clip_is_padded_and_masked(root):
    dataset = VideoTextDataset(root / "test.jsonl", root, {"teacher": View(12, 32), "student": View(4, 16)},
                               max_words=MAX_WORDS)
    assert len(dataset) == 4
    item = dataset[0]
    assert item["teacher_mask"].tolist() == [1] * 8 + [0] * 4
    assert item["teacher_video"][8:].abs().sum() == 0 and item["teacher_video"][:8].abs().sum() > 0
    assert item["student_mask"].tolist() == [1] * 4


def test_input_ids_are_the_tokenized_captions(root, train):
    captions = [json.loads(line)["caption"] for line in (root / "train.jsonl").read_text().splitlines()]
    assert train.captions == captions
    input_ids, attention_mask = tokenize(captions, MAX_WORDS)
    assert torch.equal(train.input_ids, input_ids) and torch.equal(train.attention_mask, attention_mask)
    for i in range(len(train)):
        item = train[i]
        assert torch.equal(item["input_ids"], input_ids[i])
        assert torch.equal(item["attention_mask"], attention_mask[i])


def test_keep_decoded_reads_each_clip_once(root, tmp_path):
    (tmp_path / "videos").mkdir()
    shutil.copy(root / "videos/train_00003.mp4", tmp_path / "videos/clip.mp4")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"video": "videos/clip.mp4", "caption": "a clip"}) + "\n")

    plain = VideoTextDataset(tmp_path / "pairs.jsonl", tmp_path, VIEWS, max_words=MAX_WORDS)
    assert plain.decoded is None
    kept = VideoTextDataset(tmp_path / "pairs.jsonl", tmp_path, VIEWS, max_words=MAX_WORDS, keep_decoded=True)
    assert kept.decoded == {}
    first = kept[0]
    assert list(kept.decoded) == [0]
    assert kept.decoded[0].dtype == torch.uint8 and kept.decoded[0].shape == (8, 32, 32, 3)

    (tmp_path / "videos/clip.mp4").unlink()  # a second read can only come from memory now
    second = kept[0]
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert kept.frames(0) is kept.decoded[0]
    with pytest.raises(VideoError, match="not found"):
        plain[0]


# read_annotations


def test_read_annotations_skips_blank_lines(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"video": "a.mp4", "caption": "one"}\n\n{"video": "b.mp4", "caption": "two"}\n')
    assert read_annotations(path) == [{"video": "a.mp4", "caption": "one"}, {"video": "b.mp4", "caption": "two"}]


@pytest.mark.parametrize("second_line, problem", [
    ('{"video": "b.mp4", "caption": ', "not JSON"),
    ('{"video": "b.mp4"}', "'video' and 'caption'"),
    ('{"video": "b.mp4", "caption": 3}', "'video' and 'caption'"),
    ('["b.mp4", "two"]', "'video' and 'caption'"),
])
def test_read_annotations_names_the_bad_line(tmp_path, second_line, problem):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"video": "a.mp4", "caption": "one"}\n' + second_line + "\n")
    with pytest.raises(ValueError, match="line 2") as error:
        read_annotations(path)
    assert str(path) in str(error.value) and problem in str(error.value)


def test_read_annotations_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="no annotations") as error:
        read_annotations(path)
    assert str(path) in str(error.value)


def test_dataset_reports_bad_annotations(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"video": "a.mp4", "caption": "one"}\n{"video": "b.mp4", "caption": "two"}\nnot json\n')
    with pytest.raises(ValueError, match="line 3"):
        VideoTextDataset(path, tmp_path, VIEWS, max_words=MAX_WORDS)

