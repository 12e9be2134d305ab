"""Caption-video pairs from the annotation layouts CLIP4Clip users have (spec section 5), one reader per layout.

A reader takes the split's annotation file, the folder of the dataset's other annotation files and the video
folder, and returns the pairs in file order (the captions of one video next to each other) with every problem
it found. A malformed annotation is fatal: a run stops on it. An empty caption only skips its pair. Videos
are located here, never opened (`distill.data.checks` opens them); one that is not found keeps the path it
was expected at, so the check reports it with the annotation line that names it.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from distill.core.config import RecipeError
from distill.core.schema import DataConfig

# Values of the optional `split` field of the generic layouts; "val" rows belong to neither split read here.
SPLITS = ("train", "val", "test")


class Pair(NamedTuple):
    video: str  # path of the video file
    caption: str
    where: str  # the annotation it was read from ("file, line 3"), for problem reports
    # Clips that must share a split (cut from one source video, near-duplicates) share a group: the
    # validation split holds out groups (distill.data.splits). None: the video is its own group.
    group: str | None = None


@dataclass(frozen=True)
class Problem:
    where: str  # the annotation file and line (or key) at fault
    message: str
    fatal: bool = False  # malformed annotations stop a run; other problems skip their pairs
    video: str | None = None  # the video a problem with a video file is about

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Annotations:
    """What a reader found: the usable pairs and every problem."""

    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, video: str | Path, caption: str, where: str, group: str | None = None) -> None:
        if caption.strip():
            self.pairs.append(Pair(str(video), caption, where, group or None))
        else:
            self.problems.append(Problem(where, "empty caption; pair skipped"))

    def error(self, where: str | Path, message: str) -> None:
        self.problems.append(Problem(str(where), message, fatal=True))


Reader = Callable[[Path, Path, Path, str], Annotations]


@dataclass(frozen=True)
class Format:
    """An annotation layout: its reader `(annotation file, folder of the annotations, video folder, split)`
    and, for CLIP4Clip's datasets, the default (train, test) file names under `data.annotations`. Only the
    generic layouts (jsonl, csv) read `split`, so that one file can hold both splits; CLIP4Clip's have a file
    a split."""

    read: Reader
    files: tuple[str, str] | None = None


FORMATS: dict[str, Format] = {}  # data.format -> Format, filled by @register_format


def register_format(name: str, *, files: tuple[str, str] | None = None) -> Callable[[Reader], Reader]:
    """Registers the decorated reader as `data.format: <name>`: adding a layout is one reader in this file."""

    def add(read: Reader) -> Reader:
        FORMATS[name] = Format(read, files)
        return read

    return add


def check_format(name: str) -> Format:
    """The registered format `name`, or a RecipeError naming the closest one and the known ones."""
    if name not in FORMATS:
        close = difflib.get_close_matches(name, FORMATS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RecipeError(f"data.format: unknown format {name!r}; {hint}known: {', '.join(FORMATS)}")
    return FORMATS[name]


def annotation_file(data: DataConfig, split: str) -> Path | None:
    """The split's annotation file: `data.train`/`data.test` (relative to `data.annotations` when that is set)
    or the format's CLIP4Clip file name; None where the recipe names none."""
    if data.format == "synthetic":
        return Path(data.root) / f"{split}.jsonl"
    files = FORMATS[data.format].files or (None, None)
    name = getattr(data, split) or files[split == "test"]
    return None if name is None else Path(data.annotations or ".") / name


def check_data_files(data: DataConfig) -> None:
    """The folders and annotation files the recipe's format needs are named and exist.

    Raises:
        RecipeError: names the `data.*` key that is missing, or the folder or file that is not there.
    """
    layout = check_format(data.format)
    if data.format == "synthetic":
        return
    for key in ["video_root"] + (["annotations"] if layout.files else ["train", "test"]):
        if getattr(data, key) is None:
            raise RecipeError(f"data.{key}: required when data.format is {data.format}")
    for key in ("video_root", "annotations"):
        if getattr(data, key) is not None and not Path(getattr(data, key)).is_dir():
            raise RecipeError(f"data.{key}: no such folder: {getattr(data, key)}")
    for split in ("train", "test"):
        if not annotation_file(data, split).is_file():
            raise RecipeError(f"data.{split}: no such file: {annotation_file(data, split)}")


def read_split(data: DataConfig, split: str) -> Annotations:
    """The pairs of the "train" or "test" split of the recipe's dataset, and the problems found reading them."""
    path = annotation_file(data, split)
    if path is None or not path.is_file():
        found = Annotations()
        found.error(path or f"data.{split}", "annotation file not found")
        return found
    video_root = Path(data.root if data.format == "synthetic" else data.video_root)
    folder = Path(data.annotations) if data.annotations else path.parent
    try:
        found = FORMATS[data.format].read(path, folder, video_root, split)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        found = Annotations()
        found.error(path, f"cannot read: {error}")
    if not found.pairs and not any(p.fatal for p in found.problems):
        found.error(path, "no annotations")
    return found


# Generic layouts: paths relative to data.video_root.


@register_format("synthetic")
@register_format("jsonl")
def read_jsonl(path: Path, folder: Path, video_root: Path, split: str | None = None) -> Annotations:
    """One `{"video": ..., "caption": ...}` object a line; a video may have several lines. With `split`, only
    that split's lines when the objects carry a "split" field (see `_of_split`); an optional string "group"
    keeps videos in one split (`Pair.group`)."""
    found = Annotations()
    rows = []
    for where, line in _lines(path):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            found.error(where, f"not JSON ({error})")
            continue
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("video"), str)
            or not isinstance(item.get("caption"), str)
            or not isinstance(item.get("group") or "", str)
        ):
            found.error(where, "expected an object with string 'video' and 'caption' (and 'group', if any)")
            continue
        rows.append((where, item))
    for where, item in _of_split(rows, split, path, found):
        found.add(video_root / item["video"], item["caption"], where, item.get("group"))
    return found


@register_format("csv")
def read_csv(path: Path, folder: Path, video_root: Path, split: str | None = None) -> Annotations:
    """A comma-separated file with a header naming (at least) `video` and `caption` columns, and maybe `split`
    (see `_of_split`) and `group` (`Pair.group`)."""
    found = Annotations()
    rows = list(_csv_rows(path, ("video", "caption"), found))
    for where, row in _of_split(rows, split, path, found):
        found.add(video_root / row["video"], row["caption"], where, row.get("group"))
    return found


def _of_split(
    rows: list[tuple[str, dict]], split: str | None, path: Path, found: Annotations
) -> list[tuple[str, dict]]:
    """The `(where, row)` rows of `split`, when any row carries a `split` value; else (or without `split`)
    all of them. Once one row has a split every row needs one of SPLITS: a row left out by mistake would
    otherwise land in no split, or in both."""
    labelled = [where for where, row in rows if row.get("split") not in (None, "")]
    if not labelled:
        return rows
    kept = []
    for where, row in rows:
        value = row.get("split")
        if value in (None, ""):
            found.error(
                where, f"no 'split', where other rows have one (first: {labelled[0]}); expected one of {list(SPLITS)}"
            )
        elif value not in SPLITS:
            found.error(where, f"split {value!r} is not one of {list(SPLITS)}")
        elif split is None or value == split:
            kept.append((where, row))
    if split is not None and not kept and not any(p.fatal for p in found.problems):
        found.error(path, f"no row of the {split} split (rows carry a 'split' of {list(SPLITS)})")
    return kept


# CLIP4Clip's datasets.


@register_format("msrvtt", files=("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"))
def read_msrvtt(path: Path, folder: Path, video_root: Path, split: str | None = None) -> Annotations:
    """A csv of `video_id`s: with a `sentence` column (the 1k-A test csv) one pair a row; without (the 9k and
    7k train csvs) every caption `MSRVTT_data.json` holds for the video is one pair (CLIP4Clip's
    `--expand_msrvtt_sentences`). Video `{video_id}.mp4`, else `{video_id}.webm`."""
    found = Annotations()
    captions = None
    for where, row in _csv_rows(path, ("video_id",), found):
        video_id = row["video_id"]
        video = video_root / f"{video_id}.mp4"
        if not video.is_file() and (video_root / f"{video_id}.webm").is_file():
            video = video_root / f"{video_id}.webm"
        if "sentence" in row:
            found.add(video, row["sentence"] or "", where)
            continue
        if captions is None:
            captions = _msrvtt_captions(folder / "MSRVTT_data.json", found)
        if video_id not in captions:
            found.error(where, f"no caption for {video_id} in {folder / 'MSRVTT_data.json'}")
        for caption in captions.get(video_id, ()):
            found.add(video, caption, where)
    return found


@register_format("msvd", files=("train_list.txt", "test_list.txt"))
def read_msvd(path: Path, folder: Path, video_root: Path, split: str | None = None) -> Annotations:
    """One video id a line, every caption `raw-captions.pkl` holds for it one pair; the video is the file
    under `video_root` (any depth) whose name without extension is the id."""
    found = Annotations()
    captions = _msvd_captions(folder / "raw-captions.pkl", found)
    if captions is None:
        return found
    files = _files_under(video_root, key=lambda name: os.path.splitext(name)[0])
    for where, line in _lines(path):
        video_id = line.strip()
        if video_id not in captions:
            found.error(where, f"no captions for {video_id!r} in {folder / 'raw-captions.pkl'}")
        for caption in captions.get(video_id, ()):
            found.add(files.get(video_id, video_root / video_id), caption, where)
    return found


@register_format("lsmdc", files=("LSMDC16_annos_training.csv", "LSMDC16_challenge_1000_publictect.csv"))
def read_lsmdc(path: Path, folder: Path, video_root: Path, split: str | None = None) -> Annotations:
    """Tab-separated rows of clip id, four times (ignored: the whole clip is used) and sentence; the clip is
    the file under `video_root` (any depth) whose name without extension is the clip id."""
    found = Annotations()
    files = _files_under(video_root, key=lambda name: os.path.splitext(name)[0])
    for where, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 6:
            found.error(where, f"expected 6 tab-separated fields (clip id, 4 times, sentence), got {len(fields)}")
            continue
        clip_id, sentence = fields[0].strip(), fields[5]
        found.add(files.get(clip_id, video_root / clip_id), sentence, where)
    return found


@register_format("activitynet", files=("train.json", "val_1.json"))  # CLIP4Clip tests on val_1
def read_activitynet(path: Path, folder: Path, video_root: Path, split: str | None = None) -> Annotations:
    """`{"v_<id>": {"sentences": [...], ...}}`: the sentences of a video joined into one paragraph; the video
    is the file named `<id>.*` (CLIP4Clip's naming) or `v_<id>.*` under `video_root`."""
    found = Annotations()
    data = _load_json(path, dict, found)
    files = _files_under(video_root, key=lambda name: os.path.splitext(name)[0])
    for key, entry in (data or {}).items():
        where = f"{path}, {key}"
        sentences = entry.get("sentences") if isinstance(entry, dict) else None
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            found.error(where, "expected an object with a list of strings 'sentences'")
            continue
        video_id = key.removeprefix("v_")
        video = files.get(video_id) or files.get(key) or video_root / video_id
        found.add(video, " ".join(sentences), where)
    return found


@register_format("didemo", files=("train_data.json", "test_data.json"))
def read_didemo(path: Path, folder: Path, video_root: Path, split: str | None = None) -> Annotations:
    """`[{"video": name, "description": ..., "times": ...}, ...]`: the descriptions of a video joined into one
    paragraph (times ignored); the video is the file under `video_root` (any depth) with that full name."""
    found = Annotations()
    paragraphs: dict[str, tuple[str, list[str]]] = {}  # video name -> (first item, descriptions)
    for number, item in enumerate(_load_json(path, list, found) or []):
        where = f"{path}, item {number}"
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("video"), str)
            or not isinstance(item.get("description"), str)
        ):
            found.error(where, "expected an object with string 'video' and 'description'")
            continue
        paragraphs.setdefault(item["video"], (where, []))[1].append(item["description"])
    files = _files_under(video_root, key=lambda name: name)
    for name, (where, descriptions) in paragraphs.items():
        found.add(files.get(name, video_root / name), " ".join(descriptions), where)
    return found


def _lines(path: Path) -> Iterator[tuple[str, str]]:
    """`("file, line N", text)` for every non-blank line."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            yield f"{path}, line {number}", line


def _csv_rows(path: Path, columns: tuple[str, ...], found: Annotations) -> Iterator[tuple[str, dict]]:
    """`("file, line N", row)` for every row of a csv with a header holding `columns`."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            found.error(path, f"no {missing} column in the header {reader.fieldnames}")
            return
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if any(row[c] is None for c in columns):
                found.error(where, f"expected the columns {reader.fieldnames}, got {len(row) - 1} fields")
                continue
            yield where, row


def _load_json(path: Path, kind: type, found: Annotations):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        found.error(path, f"cannot read JSON ({error})")
        return None
    if not isinstance(data, kind):
        found.error(path, f"expected a JSON {'object' if kind is dict else 'array'} at the top level")
        return None
    return data


def _files_under(root: Path, key: Callable[[str], str]) -> dict[str, Path]:
    """Every file under `root`, at any depth, by `key(file name)`; the first in sorted order wins a tie."""
    files: dict[str, Path] = {}
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in sorted(names):
            files.setdefault(key(name), Path(folder) / name)
    return files


def _msrvtt_captions(path: Path, found: Annotations) -> dict[str, list[str]]:
    """video_id -> its captions, in file order, from `MSRVTT_data.json`'s `sentences`."""
    data = _load_json(path, dict, found)
    captions: dict[str, list[str]] = {}
    if data is None:
        return captions
    sentences = data.get("sentences")
    if not isinstance(sentences, list):
        found.error(path, "expected a 'sentences' list")
        return captions
    for number, item in enumerate(sentences):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("video_id"), str)
            or not isinstance(item.get("caption"), str)
        ):
            found.error(f"{path}, sentences[{number}]", "expected an object with string 'video_id' and 'caption'")
            continue
        captions.setdefault(item["video_id"], []).append(item["caption"])
    return captions


class _ContainersOnly(pickle.Unpickler):
    """Unpickles dicts, lists, tuples and strings, which need no class lookup; refuses every class (a pickle
    naming one could run any code)."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it names {module}.{name}; only dicts, lists and strings are accepted")


def _msvd_captions(path: Path, found: Annotations) -> dict[str, list[str]] | None:
    """video id -> its captions, from `raw-captions.pkl` (id -> list of captions, each a list of words)."""
    try:
        data = _ContainersOnly(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as error:
        found.error(path, f"cannot read the captions pickle: {error}")
        return None
    if not isinstance(data, dict):
        found.error(path, f"expected a dict of video id -> list of captions, got {type(data).__name__}")
        return None
    captions = {}
    for video_id, entries in data.items():
        if (
            not isinstance(video_id, str)
            or not isinstance(entries, (list, tuple))
            or not all(isinstance(e, str) or _is_word_list(e) for e in entries)
        ):
            found.error(path, f"entry {video_id!r}: expected a list of captions (strings or lists of words)")
            continue
        captions[video_id] = [e if isinstance(e, str) else " ".join(e) for e in entries]
    return captions


def _is_word_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(word, str) for word in value)
