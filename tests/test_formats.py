"""Each dataset layout, built as a small tree of real files, read into (video, caption) pairs."""

import json
import pickle
import shutil

import numpy as np
import pytest

from distill.core.config import RecipeError
from distill.core.schema import DataConfig
from distill.data import formats
from distill.data.checks import check_videos
from distill.data.formats import annotation_file, read_split
from distill.data.synthetic import write_mp4
from distill.recipe import load_recipe


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """One real 1 s H.264 clip that every fixture tree copies under its own names."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_mp4(path, np.full((4, 32, 32, 3), 90, np.uint8), fps=4)
    return path


def place(clip, root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, root / name)


def read(data, split):
    found = read_split(data, split)
    return [(p.video, p.caption) for p in found.pairs], found.problems


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# MSR-VTT


@pytest.fixture
def msrvtt(tmp_path, clip):
    ann, videos = tmp_path / "msrvtt_data", tmp_path / "MSRVTT_Videos"
    place(clip, videos, "video0.mp4", "video1.mp4", "video2.webm", "video7.mp4", "video8.mp4")
    write_lines(ann / "MSRVTT_train.9k.csv", ["video_id", "video0", "video1", "video2"])
    write_lines(ann / "MSRVTT_train.7k.csv", ["video_id", "video1"])
    sentences = [
        ("video1", "a man cooks"),
        ("video0", "a dog runs"),
        ("video7", "not in train"),
        ("video1", "someone is cooking"),
        ("video2", "a webm clip"),
        ("video0", "a dog is running"),
    ]
    (ann / "MSRVTT_data.json").write_text(
        json.dumps(
            {
                "videos": [{"video_id": f"video{i}", "url": ""} for i in range(9)],
                "sentences": [{"video_id": v, "caption": c, "sen_id": i} for i, (v, c) in enumerate(sentences)],
            }
        )
    )
    write_lines(
        ann / "MSRVTT_JSFUSION_test.csv",
        [
            "key,vid_key,video_id,sentence",
            "ret0,msr7,video7,a cat sleeps",
            "ret1,msr8,video8,people dance",
            "ret2,msr9,video9,a missing clip",
        ],
    )
    return DataConfig(format="msrvtt", annotations=str(ann), video_root=str(videos))


def test_msrvtt_train_expands_every_caption_of_a_train_video(msrvtt):
    pairs, problems = read(msrvtt, "train")
    root = msrvtt.video_root
    assert pairs == [
        (f"{root}/video0.mp4", "a dog runs"),
        (f"{root}/video0.mp4", "a dog is running"),
        (f"{root}/video1.mp4", "a man cooks"),
        (f"{root}/video1.mp4", "someone is cooking"),
        (f"{root}/video2.webm", "a webm clip"),
    ]
    assert problems == []


def test_msrvtt_7k_split_and_1k_a_test(msrvtt):
    msrvtt.train = "MSRVTT_train.7k.csv"
    assert read(msrvtt, "train")[0] == [
        (f"{msrvtt.video_root}/video1.mp4", "a man cooks"),
        (f"{msrvtt.video_root}/video1.mp4", "someone is cooking"),
    ]
    found = read_split(msrvtt, "test")
    assert [(p.video, p.caption) for p in found.pairs] == [
        (f"{msrvtt.video_root}/video7.mp4", "a cat sleeps"),
        (f"{msrvtt.video_root}/video8.mp4", "people dance"),
        (f"{msrvtt.video_root}/video9.mp4", "a missing clip"),
    ]
    # The missing video is found when the videos are opened, and reported with its csv line.
    pairs, bad = check_videos(found.pairs)
    assert len(pairs) == 2 and len(bad) == 1
    assert str(bad[0]).startswith(f"{annotation_file(msrvtt, 'test')}, line 4: video file not found")


def test_msrvtt_train_video_without_captions_is_an_error(msrvtt):
    write_lines(annotation_file(msrvtt, "train"), ["video_id", "video0", "video5"])
    _, problems = read(msrvtt, "train")
    assert [(p.where.endswith("line 3"), p.fatal) for p in problems] == [(True, True)]
    assert "no caption for video5" in problems[0].message


# MSVD


@pytest.fixture
def msvd(tmp_path, clip):
    ann, videos = tmp_path / "msvd_data", tmp_path / "MSVD_Videos"
    place(clip, videos, "a/-4wsuPCjDBc_5_15.avi", "b/zv2RIbUsnSw_335_341.mp4", "b/other_1_2.avi")
    write_lines(ann / "train_list.txt", ["zv2RIbUsnSw_335_341"])
    write_lines(ann / "test_list.txt", ["-4wsuPCjDBc_5_15", "other_1_2"])
    captions = {
        "-4wsuPCjDBc_5_15": [["a", "man", "sings"], ["someone", "is", "singing"], ["a", "song"]],
        "zv2RIbUsnSw_335_341": [["a", "cat", "plays"]],
        "other_1_2": [["a", "car"], "a red car"],
    }
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    return DataConfig(format="msvd", annotations=str(ann), video_root=str(videos))


def test_msvd_every_caption_is_a_pair_and_videos_are_found_by_name(msvd):
    root = msvd.video_root
    assert read(msvd, "train") == ([(f"{root}/b/zv2RIbUsnSw_335_341.mp4", "a cat plays")], [])
    pairs, problems = read(msvd, "test")
    assert pairs == [
        (f"{root}/a/-4wsuPCjDBc_5_15.avi", "a man sings"),
        (f"{root}/a/-4wsuPCjDBc_5_15.avi", "someone is singing"),
        (f"{root}/a/-4wsuPCjDBc_5_15.avi", "a song"),
        (f"{root}/b/other_1_2.avi", "a car"),
        (f"{root}/b/other_1_2.avi", "a red car"),
    ]
    assert problems == []


class Payload:
    """Unpickling this would create a file: what a malicious raw-captions.pkl could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_msvd_pickle_naming_a_class_is_refused_and_never_run(msvd, tmp_path):
    marker = tmp_path / "payload_ran"
    path = annotation_file(msvd, "train").parent / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"zv2RIbUsnSw_335_341": [Payload(marker)]}))
    pairs, problems = read(msvd, "train")
    assert not marker.exists()
    assert pairs == [] and len(problems) == 1 and problems[0].fatal
    assert problems[0].where == str(path) and "io.open" in problems[0].message


def test_msvd_list_names_a_video_without_captions(msvd):
    write_lines(annotation_file(msvd, "train"), ["zv2RIbUsnSw_335_341", "unknown_1_2"])
    pairs, problems = read(msvd, "train")
    assert len(pairs) == 1
    assert [str(p) for p in problems] == [
        f"{annotation_file(msvd, 'train')}, line 2: no captions for 'unknown_1_2' in "
        f"{msvd.annotations}/raw-captions.pkl"
    ]


# LSMDC


def test_lsmdc_rows_bad_lines_and_missing_clips(tmp_path, clip):
    ann, videos = tmp_path / "lsmdc_data", tmp_path / "avi"
    place(
        clip,
        videos,
        "0001_Movie/0001_Movie_00.00.01.000-00.00.03.000.avi",
        "0002_Other/0002_Other_00.01.00.000-00.01.02.000.avi",
    )
    write_lines(
        ann / "LSMDC16_annos_training.csv",
        [
            "0001_Movie_00.00.01.000-00.00.03.000\t00.00.01.000\t00.00.03.000\t00.00.01.000\t00.00.03.000\t"
            "Someone runs.",
            "0001_Movie_00.00.01.000-00.00.03.000\t00.00.01.000\t00.00.03.000\t00.00.01.000\t00.00.03.000\tHe stops.",
            "0003_Gone_00.00.00.000-00.00.01.000\t0\t1\t0\t1\tA missing clip.",
            "0002_Other_00.01.00.000-00.01.02.000\t0\t1\t0\tonly five fields",
            "0002_Other_00.01.00.000-00.01.02.000\t0\t1\t0\t1\t",
        ],
    )
    write_lines(
        ann / "LSMDC16_challenge_1000_publictect.csv",
        ["0002_Other_00.01.00.000-00.01.02.000\t0\t1\t0\t1\tSomeone drives."],
    )
    data = DataConfig(format="lsmdc", annotations=str(ann), video_root=str(videos))
    found = read_split(data, "train")
    movie = f"{videos}/0001_Movie/0001_Movie_00.00.01.000-00.00.03.000.avi"
    assert [(p.video, p.caption) for p in found.pairs] == [
        (movie, "Someone runs."),
        (movie, "He stops."),
        (f"{videos}/0003_Gone_00.00.00.000-00.00.01.000", "A missing clip."),
    ]
    train_csv = ann / "LSMDC16_annos_training.csv"
    assert [(str(p), p.fatal) for p in found.problems] == [
        (f"{train_csv}, line 4: expected 6 tab-separated fields (clip id, 4 times, sentence), got 5", True),
        (f"{train_csv}, line 5: empty caption; pair skipped", False),
    ]
    pairs, bad = check_videos(found.pairs)
    assert len(pairs) == 2 and [p.where for p in bad] == [f"{train_csv}, line 3"]
    assert read(data, "test") == (
        [(f"{videos}/0002_Other/0002_Other_00.01.00.000-00.01.02.000.avi", "Someone drives.")],
        [],
    )


# ActivityNet


def test_activitynet_paragraph_per_video(tmp_path, clip):
    ann, videos = tmp_path / "anet_data", tmp_path / "anet_videos"
    place(clip, videos, "abc123.mp4", "v_def456.mkv", "ghi789.mp4")

    def entry(*sentences):
        return {"duration": 40.5, "timestamps": [[0, 10]] * len(sentences), "sentences": list(sentences)}

    (ann / "train.json").parent.mkdir(parents=True)
    (ann / "train.json").write_text(
        json.dumps({"v_abc123": entry("A man walks in.", " He sits down."), "v_def456": entry("Kids play.")})
    )
    (ann / "val_1.json").write_text(
        json.dumps({"v_ghi789": entry("A dog barks.", " It runs.", " It sleeps."), "v_bad": {"duration": 3}})
    )
    data = DataConfig(format="activitynet", annotations=str(ann), video_root=str(videos))
    assert read(data, "train") == (
        [(f"{videos}/abc123.mp4", "A man walks in.  He sits down."), (f"{videos}/v_def456.mkv", "Kids play.")],
        [],
    )
    pairs, problems = read(data, "test")
    assert pairs == [(f"{videos}/ghi789.mp4", "A dog barks.  It runs.  It sleeps.")]
    assert [(str(p), p.fatal) for p in problems] == [
        (f"{ann / 'val_1.json'}, v_bad: expected an object with a list of strings 'sentences'", True)
    ]


# DiDeMo


def test_didemo_paragraph_per_video_matched_on_the_full_name(tmp_path, clip):
    ann, videos = tmp_path / "didemo_data", tmp_path / "didemo_videos"
    place(
        clip,
        videos,
        "12090392@N02_13482799053_87ef417396.mov",
        "sub/10015567@N08_3655084291_d8b58466fa.mp4",
        "10015567@N08_3655084291_d8b58466fa.mov",
    )

    def item(video, description):
        return {"video": video, "description": description, "times": [[0, 0], [1, 1]], "annotation_id": 1}

    (ann / "train_data.json").parent.mkdir(parents=True)
    (ann / "train_data.json").write_text(
        json.dumps(
            [
                item("12090392@N02_13482799053_87ef417396.mov", "a woman waves"),
                item("10015567@N08_3655084291_d8b58466fa.mp4", "a car turns"),
                item("12090392@N02_13482799053_87ef417396.mov", "the camera pans"),
            ]
        )
    )
    (ann / "test_data.json").write_text(json.dumps([item("gone.mov", "nothing")]))
    data = DataConfig(format="didemo", annotations=str(ann), video_root=str(videos))
    assert read(data, "train") == (
        [
            (f"{videos}/12090392@N02_13482799053_87ef417396.mov", "a woman waves the camera pans"),
            (f"{videos}/sub/10015567@N08_3655084291_d8b58466fa.mp4", "a car turns"),
        ],
        [],
    )
    found = read_split(data, "test")
    _, bad = check_videos(found.pairs)
    assert [p.where for p in bad] == [f"{ann / 'test_data.json'}, item 0"]


# Generic JSONL and CSV


def test_jsonl_several_captions_per_video_blank_and_bad_lines(tmp_path, clip):
    place(clip, tmp_path / "videos", "a.mp4", "b.mp4")
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            '{"video": "a.mp4", "caption": "one"}',
            "",
            '{"video": "a.mp4", "caption": "two"}',
            '{"video": "b.mp4", "caption": "  "}',
            '{"video": "b.mp4", "caption": ',
            '["b.mp4", "three"]',
            '{"video": "b.mp4", "caption": 3}',
            '{"video": "b.mp4", "caption": "four"}',
        ],
    )
    data = DataConfig(format="jsonl", train=str(path), test=str(path), video_root=str(tmp_path / "videos"))
    pairs, problems = read(data, "train")
    videos = tmp_path / "videos"
    assert pairs == [(f"{videos}/a.mp4", "one"), (f"{videos}/a.mp4", "two"), (f"{videos}/b.mp4", "four")]
    # Malformed lines first (found while reading, before the split field is known), then the pairs' problems.
    assert [(p.where, p.fatal) for p in problems] == [
        (f"{path}, line 5", True),
        (f"{path}, line 6", True),
        (f"{path}, line 7", True),
        (f"{path}, line 4", False),
    ]
    assert "not JSON" in problems[0].message and "string 'video' and 'caption'" in problems[1].message
    assert "empty caption" in problems[3].message


def test_jsonl_and_csv_group_field(tmp_path, clip):
    place(clip, tmp_path / "videos", "a.mp4", "b.mp4")
    jsonl = write_lines(
        tmp_path / "train.jsonl",
        [
            '{"video": "a.mp4", "caption": "one", "group": "scene1"}',
            '{"video": "b.mp4", "caption": "two"}',
            '{"video": "b.mp4", "caption": "three", "group": 7}',
        ],
    )
    data = DataConfig(format="jsonl", train=str(jsonl), test=str(jsonl), video_root=str(tmp_path / "videos"))
    found = read_split(data, "train")
    assert [p.group for p in found.pairs] == ["scene1", None]
    assert [p.fatal for p in found.problems] == [True] and "'group', if any" in found.problems[0].message
    csv = write_lines(tmp_path / "train.csv", ["video,caption,group", "a.mp4,one,scene1", "b.mp4,two,"])
    found = read_split(
        DataConfig(format="csv", train=str(csv), test=str(csv), video_root=str(tmp_path / "videos")), "train"
    )
    assert [p.group for p in found.pairs] == ["scene1", None] and not found.problems


def test_csv_video_and_caption_columns(tmp_path, clip):
    place(clip, tmp_path / "videos", "a.mp4", "b.mp4")
    (tmp_path / "ann").mkdir()
    write_lines(
        tmp_path / "ann" / "train.csv",
        ["id,video,caption", '1,a.mp4,"one, with a comma"', "2,b.mp4,two", "3,a.mp4,three", "4,b.mp4"],
    )
    write_lines(tmp_path / "ann" / "test.csv", ["clip,text", "a.mp4,one"])
    data = DataConfig(
        format="csv",
        annotations=str(tmp_path / "ann"),
        train="train.csv",
        test="test.csv",
        video_root=str(tmp_path / "videos"),
    )
    pairs, problems = read(data, "train")
    videos = tmp_path / "videos"
    assert pairs == [(f"{videos}/a.mp4", "one, with a comma"), (f"{videos}/b.mp4", "two"), (f"{videos}/a.mp4", "three")]
    assert [(p.where, p.fatal) for p in problems] == [(f"{tmp_path / 'ann' / 'train.csv'}, line 5", True)]
    _, problems = read(data, "test")
    assert [p.fatal for p in problems] == [True] and "no ['video', 'caption'] column" in problems[0].message


def test_jsonl_split_field_puts_both_splits_in_one_file(tmp_path, clip):
    place(clip, tmp_path / "videos", "a.mp4", "b.mp4", "c.mp4")
    rows = [
        ("a.mp4", "one", "train"),
        ("b.mp4", "two", "test"),
        ("a.mp4", "three", "train"),
        ("c.mp4", "four", "val"),
        ("b.mp4", "five", "test"),
    ]
    path = write_lines(tmp_path / "all.jsonl", [json.dumps({"video": v, "caption": c, "split": s}) for v, c, s in rows])
    data = DataConfig(format="jsonl", train=str(path), test=str(path), video_root=str(tmp_path / "videos"))
    videos = tmp_path / "videos"
    assert read(data, "train") == ([(f"{videos}/a.mp4", "one"), (f"{videos}/a.mp4", "three")], [])
    assert read(data, "test") == ([(f"{videos}/b.mp4", "two"), (f"{videos}/b.mp4", "five")], [])
    assert [p.where for p in read_split(data, "test").pairs] == [f"{path}, line 2", f"{path}, line 5"]


def test_jsonl_rows_without_split_among_rows_with_one_are_errors(tmp_path):
    path = write_lines(
        tmp_path / "all.jsonl",
        [
            '{"video": "a.mp4", "caption": "one"}',
            '{"video": "b.mp4", "caption": "two", "split": "test"}',
            '{"video": "c.mp4", "caption": "three", "split": "Train"}',
            '{"video": "a.mp4", "caption": "four"}',
        ],
    )
    data = DataConfig(format="jsonl", train=str(path), test=str(path), video_root=str(tmp_path))
    pairs, problems = read(data, "train")
    assert pairs == []
    assert [str(p) for p in problems] == [
        f"{path}, line 1: no 'split', where other rows have one (first: {path}, line 2); expected one of "
        "['train', 'val', 'test']",
        f"{path}, line 3: split 'Train' is not one of ['train', 'val', 'test']",
        f"{path}, line 4: no 'split', where other rows have one (first: {path}, line 2); expected one of "
        "['train', 'val', 'test']",
    ]
    assert all(p.fatal for p in problems)


def test_csv_split_column_and_a_split_with_no_rows(tmp_path, clip):
    place(clip, tmp_path / "videos", "a.mp4", "b.mp4")
    path = write_lines(
        tmp_path / "ann" / "all.csv",
        ["video,caption,split", "a.mp4,one,train", "b.mp4,two,test", 'a.mp4,"three, two",train', "b.mp4,four,"],
    )
    data = DataConfig(
        format="csv",
        annotations=str(tmp_path / "ann"),
        train="all.csv",
        test="all.csv",
        video_root=str(tmp_path / "videos"),
    )
    videos = tmp_path / "videos"
    pairs, problems = read(data, "test")
    assert pairs == [(f"{videos}/b.mp4", "two")]
    assert [(str(p), p.fatal) for p in problems] == [
        (
            f"{path}, line 5: no 'split', where other rows have one (first: {path}, line 2); expected one of "
            "['train', 'val', 'test']",
            True,
        )
    ]
    write_lines(path, ["video,caption,split", "a.mp4,one,train", "b.mp4,two,val"])
    assert read(data, "train") == ([(f"{videos}/a.mp4", "one")], [])
    _, problems = read(data, "test")
    assert [str(p) for p in problems] == [
        f"{path}: no row of the test split (rows carry a 'split' of ['train', 'val', 'test'])"
    ]
    write_lines(path, ["video,caption,split", "a.mp4,one,", "b.mp4,two,"])  # an empty column: no split
    assert read(data, "test") == ([(f"{videos}/a.mp4", "one"), (f"{videos}/b.mp4", "two")], [])


def test_missing_and_empty_annotation_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    data = DataConfig(
        format="jsonl", train=str(tmp_path / "empty.jsonl"), test=str(tmp_path / "none.jsonl"), video_root=str(tmp_path)
    )
    assert [str(p) for p in read_split(data, "train").problems] == [f"{tmp_path / 'empty.jsonl'}: no annotations"]
    assert [str(p) for p in read_split(data, "test").problems] == [
        f"{tmp_path / 'none.jsonl'}: annotation file not found"
    ]


# Recipes


def write_recipe(tmp_path, data):
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"name": "check", "output_dir": str(tmp_path / "run"), "data": data}))
    return path


def test_recipe_names_a_clip4clip_dataset_by_folders(msrvtt, tmp_path):
    data = {"format": "msrvtt", "annotations": msrvtt.annotations, "video_root": msrvtt.video_root}
    recipe = load_recipe(write_recipe(tmp_path, data))
    assert annotation_file(recipe.data, "train").name == "MSRVTT_train.9k.csv"
    recipe = load_recipe(write_recipe(tmp_path, data), ["data.train=MSRVTT_train.7k.csv"])
    assert len(read_split(recipe.data, "train").pairs) == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"annotations": None}, "data.annotations: required when data.format is msrvtt"),
        ({"video_root": "nowhere"}, "data.video_root: no such folder: nowhere"),
        ({"test": "MSRVTT_val.csv"}, "data.test: no such file: "),
        ({"format": "jsonl"}, "data.train: required when data.format is jsonl"),
    ],
)
def test_recipe_errors_name_the_data_key(msrvtt, tmp_path, change, message):
    data = {"format": "msrvtt", "annotations": msrvtt.annotations, "video_root": msrvtt.video_root, **change}
    with pytest.raises(RecipeError, match=message):
        load_recipe(write_recipe(tmp_path, data))


def test_unreadable_annotation_file_is_a_problem_not_a_crash(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b"\xff\xfe\x00binary")
    data = DataConfig(
        format="jsonl",
        train=str(tmp_path / "train.jsonl"),
        test=str(tmp_path / "train.jsonl"),
        video_root=str(tmp_path),
    )
    problems = read_split(data, "train").problems
    assert len(problems) == 1 and problems[0].fatal and problems[0].message.startswith("cannot read:")


def test_a_new_layout_is_one_registered_reader(tmp_path, clip, monkeypatch):
    """`@register_format` is the one place a layout is added: the recipe accepts its name, its default files
    and its reader are used; an unknown name is refused with the closest known one."""
    monkeypatch.setattr(formats, "FORMATS", dict(formats.FORMATS))  # the registration ends with the test

    @formats.register_format("tsv_list", files=("train.tsv", "test.tsv"))
    def read_tsv_list(path, folder, video_root, split):
        found = formats.Annotations()
        for where, line in formats._lines(path):
            video, caption = line.split("\t")
            found.add(video_root / video, caption, where)
        return found

    place(clip, tmp_path / "videos", "a.mp4", "b.mp4")
    for split in ("train", "test"):
        write_lines(tmp_path / "ann" / f"{split}.tsv", [f"a.mp4\t{split} one", f"b.mp4\t{split} two"])
    (tmp_path / "r.yaml").write_text(
        json.dumps(
            {
                "data": {
                    "format": "tsv_list",
                    "annotations": str(tmp_path / "ann"),
                    "video_root": str(tmp_path / "videos"),
                },
                "stages": ["data"],
            }
        )
    )
    data = load_recipe(tmp_path / "r.yaml").data
    assert read(data, "test") == (
        [(str(tmp_path / "videos" / "a.mp4"), "test one"), (str(tmp_path / "videos" / "b.mp4"), "test two")],
        [],
    )
    with pytest.raises(RecipeError, match=r"^data.format: unknown format 'tsv_lst'; did you mean 'tsv_list'\? known: "):
        load_recipe(tmp_path / "r.yaml", ["data.format=tsv_lst"])
