import json
import shutil

import pytest
import torch

from distill.core.schema import SyntheticConfig
from distill.data.dataset import VideoTextDataset, View
from distill.data.formats import read_jsonl
from distill.data.synthetic import generate_synthetic
from distill.data.video import VideoError, load_frames, preprocess
from teachers.tokenizer import tokenize

# 8 s at 4 fps: one frame a second gives 8 frames, enough for the teacher's 8.
CONFIG = SyntheticConfig(num_train=6, num_test=4, size=32, fps=4, seconds=8, seed=0)
VIEWS = {"teacher": View(8, 32), "student": View(4, 16)}
MAX_WORDS = 16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("dataset") / "demo", CONFIG)


def pairs(path, root):
    found = read_jsonl(path, path.parent, root)
    assert not found.problems
    return found.pairs


@pytest.fixture(scope="module")
def train(root):
    return VideoTextDataset(pairs(root / "train.jsonl", root), VIEWS, max_words=MAX_WORDS)


def test_item_keys_and_shapes(train):
    assert len(train) == 6
    item = train[2]
    assert set(item) == {
        "index",
        "input_ids",
        "attention_mask",
        "teacher_video",
        "teacher_mask",
        "student_video",
        "student_mask",
    }
    assert item["index"].item() == 2
    assert item["input_ids"].shape == item["attention_mask"].shape == (MAX_WORDS,)
    assert item["teacher_video"].shape == (8, 3, 32, 32) and item["teacher_video"].dtype == torch.float32
    assert item["student_video"].shape == (4, 3, 16, 16) and item["student_video"].dtype == torch.float32
    assert item["teacher_mask"].tolist() == [1] * 8
    assert item["student_mask"].tolist() == [1] * 4


def test_views_take_their_frames_from_one_decode(train):
    frames = load_frames(train.video_ids[1], max_frames=8)
    assert len(frames) == 8
    item = train[1]
    assert torch.equal(item["teacher_video"], preprocess(frames, 32))
    evenly_spaced = [0, 2, 4, 7]  # floored linspace(0, 7, 4)
    assert torch.equal(item["student_video"], preprocess(frames[evenly_spaced], 16))


def test_student_view_is_a_subset_of_the_teacher_decode(root):
    # Two frames a second: 16 candidates. The teacher decode keeps frames 0 4 8 12 16 20 24 30 and the
    # student takes 0 8 16 30 of those, where a decode of its own would have kept 0 10 20 30.
    dataset = VideoTextDataset(pairs(root / "train.jsonl", root), VIEWS, max_words=MAX_WORDS, framerate=2)
    teacher_decode = load_frames(dataset.video_ids[4], max_frames=8, framerate=2)
    item = dataset[4]
    assert torch.equal(item["teacher_video"], preprocess(teacher_decode, 32))
    assert torch.equal(item["student_video"], preprocess(teacher_decode[[0, 2, 4, 7]], 16))
    own_decode = load_frames(dataset.video_ids[4], max_frames=4, framerate=2)
    assert not torch.equal(item["student_video"], preprocess(own_decode, 16))


def test_short_clip_is_padded_and_masked(root):
    dataset = VideoTextDataset(
        pairs(root / "test.jsonl", root), {"teacher": View(12, 32), "student": View(4, 16)}, max_words=MAX_WORDS
    )
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


def test_keep_decoded_reads_each_video_once(root, tmp_path):
    clip = tmp_path / "clip.mp4"
    shutil.copy(root / "videos/train_00003.mp4", clip)
    two_captions = [(str(clip), "a clip"), (str(clip), "the same clip")]

    plain = VideoTextDataset(two_captions, VIEWS, max_words=MAX_WORDS)
    assert plain.decoded is None
    kept = VideoTextDataset(two_captions, VIEWS, max_words=MAX_WORDS, keep_decoded=True)
    assert kept.decoded == {}
    first = kept[0]
    assert list(kept.decoded) == [str(clip)]
    kept_frames = kept.decoded[str(clip)]  # resized once per view size
    assert {size: (f.dtype, f.shape) for size, f in kept_frames.items()} == {
        16: (torch.uint8, (8, 3, 16, 16)),
        32: (torch.uint8, (8, 3, 32, 32)),
    }

    clip.unlink()  # a second read can only come from memory now
    again, other_caption = kept[0], kept[1]
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert torch.equal(first["teacher_video"], other_caption["teacher_video"])
    assert not torch.equal(first["input_ids"], other_caption["input_ids"])
    assert kept.frames(1) is kept.decoded[str(clip)]
    with pytest.raises(VideoError, match="not found"):
        plain[0]


def test_video_ids_name_the_video_of_each_pair(tmp_path):
    pairs = [("a.mp4", "one"), ("a.mp4", "two"), ("b.mp4", "three")]
    dataset = VideoTextDataset(pairs, VIEWS, max_words=MAX_WORDS)
    assert dataset.video_ids == ["a.mp4", "a.mp4", "b.mp4"]
    assert dataset.captions == ["one", "two", "three"]
    with pytest.raises(ValueError, match="no pairs"):
        VideoTextDataset([], VIEWS, max_words=MAX_WORDS)
