"""The teacher cache: the cached outputs equal the online teacher's (loose and tightTransf teachers), an
interrupted cache is finished and not recomputed, a cache made for another run is refused naming what
differs, and distillation from the cache gives the losses and the student of online distillation through
the real CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import DATA, STUDENT, TRAIN
from torch.utils.data import default_collate

from distill.context import Run, open_datasets, start_run
from distill.core.config import recipe_to_dict
from distill.core.schema import SyntheticConfig, TeacherConfig
from distill.data.dataset import VideoTextDataset, View
from distill.data.formats import read_jsonl
from distill.data.synthetic import generate_synthetic
from distill.recipe import load_recipe
from distill.stages import checkpoint_settings, distill, teacher_outputs
from distill.training.cache import CacheError, TeacherCache, build_cache, cache_key, read_manifest, teacher_key
from distill.training.gradcache import split_batch
from distill.training.train import OnlineTeacher
from teachers import CLIP4Clip, save_teacher
from teachers.archs import teacher_arch

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = SyntheticConfig(num_train=56, num_test=16, size=32, fps=4, seconds=4)  # tiny.DATA's
# The students are compared within 1e-5: exported unrounded (fp16 could round two nearly equal values apart).
TINY = [*DATA, *STUDENT, *TRAIN, "train.log_every=1", "export.dtype=fp32"]
SAMPLING = {"max_frames": 4, "image_size": 16}


def tiny_teacher(sim_header: str) -> CLIP4Clip:
    """A random (untrained) tiny teacher: the cache must give whatever it computes."""
    torch.manual_seed(0)
    config = TeacherConfig(
        max_frames=4,
        sim_header=sim_header,
        image_size=16,
        vision_width=64,
        vision_layers=1,
        text_width=64,
        text_layers=1,
        cross_layers=1,
    )
    return CLIP4Clip(teacher_arch(config, max_words=32)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("cache") / "data", SYNTHETIC)


def train_pairs(root: Path, shared: int = 1) -> list:
    """The train pairs; with `shared` > 1, every `shared` consecutive captions share one video."""
    pairs = read_jsonl(root / "train.jsonl", root, root).pairs
    return [(pairs[i - i % shared][0], pair[1]) for i, pair in enumerate(pairs)]


@pytest.mark.parametrize("sim_header", ["seqTransf", "tightTransf"])
def test_cached_outputs_equal_the_online_teacher(data, tmp_path, sim_header):
    """Several captions a video and several shards; batches looked up in any order, whole or in micro-batches."""
    teacher = tiny_teacher(sim_header)
    dataset = VideoTextDataset(
        train_pairs(data, shared=3)[:30], {"teacher": View(4, 16), "student": View(3, 16)}, max_words=32
    )
    key = cache_key(dataset, teacher_key(teacher), SAMPLING)
    accelerator = Accelerator(cpu=True)
    assert (
        build_cache(
            tmp_path,
            teacher,
            dataset.select_views(["teacher"]),
            key,
            accelerator=accelerator,
            batch_size=4,
            videos_per_shard=4,
        )
        == 3
    )  # 10 videos
    cache = TeacherCache(tmp_path, key, teacher, device=torch.device("cpu"))
    for rows in ([5, 0, 29, 17, 3, 4], list(range(30))):
        batch = default_collate([dataset[i] for i in rows])
        # Micro-batches give the outputs of their concatenation (a tight teacher scores across them).
        online, cached = OnlineTeacher(teacher)(split_batch(batch, 2)), cache([{"index": batch["index"]}])
        assert online.keys() == cached.keys()
        for name in online:
            torch.testing.assert_close(cached[name], online[name], rtol=0, atol=1e-6, msg=name)


def test_an_interrupted_cache_is_finished_and_another_replaced(data, tmp_path):
    teacher = tiny_teacher("meanP")
    dataset = VideoTextDataset(train_pairs(data)[:12], {"teacher": View(4, 16)}, max_words=32)
    key = cache_key(dataset, teacher_key(teacher), SAMPLING)
    accelerator = Accelerator(cpu=True)
    assert build_cache(tmp_path, teacher, dataset, key, accelerator=accelerator, batch_size=4, videos_per_shard=5) == 3
    first = {p.name: load_file(p) for p in tmp_path.glob("shard_*.safetensors")}
    assert sorted(first) == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    assert read_manifest(tmp_path)["complete"]

    # As after a kill in the middle of the second shard: unfinished manifest, no shard_00001.
    (tmp_path / "shard_00001.safetensors").unlink()
    manifest = read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(CacheError, match="unfinished .1 of 3 shards missing.: run the 'cache' stage again"):
        TeacherCache(tmp_path, key, teacher, device=torch.device("cpu"))
    assert (
        build_cache(
            tmp_path, teacher, dataset, key, accelerator=accelerator, batch_size=4, num_workers=2, videos_per_shard=5
        )
        == 1
    )  # decoded by worker processes this time
    assert build_cache(tmp_path, teacher, dataset, key, accelerator=accelerator, batch_size=4, videos_per_shard=5) == 0
    for name, tensors in first.items():
        again = load_file(tmp_path / name)
        assert all(torch.equal(again[k], v) for k, v in tensors.items()), name

    # Another teacher: refused by the reader, replaced by the cache stage.
    other = tiny_teacher("seqTransf")
    other_key = cache_key(dataset, teacher_key(other), SAMPLING)
    with pytest.raises(
        CacheError,
        match=r"teacher.sha256: '[0-9a-f]{64}' in the cache, '[0-9a-f]{64}' in this run; "
        r"teacher.sim_header: 'meanP' in the cache, 'seqTransf' in this run\)",
    ):
        TeacherCache(tmp_path, other_key, other, device=torch.device("cpu"))
    assert (
        build_cache(tmp_path, other, dataset, other_key, accelerator=accelerator, batch_size=4, videos_per_shard=5) == 3
    )
    TeacherCache(tmp_path, other_key, other, device=torch.device("cpu"))


def test_a_pair_without_cached_outputs_is_refused(data, tmp_path):
    """A shard that lost a caption's row (written by another version, or edited) is refused when the cache is
    read, naming the pair; before, its row was uninitialised memory."""
    teacher = tiny_teacher("meanP")
    dataset = VideoTextDataset(train_pairs(data)[:8], {"teacher": View(4, 16)}, max_words=32)
    key = cache_key(dataset, teacher_key(teacher), SAMPLING)
    build_cache(tmp_path, teacher, dataset, key, accelerator=Accelerator(cpu=True), batch_size=4, videos_per_shard=4)
    shard = tmp_path / "shard_00001.safetensors"
    with safe_open(str(shard), framework="pt") as f:
        metadata, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    keep = tensors["text_pairs"] != 6
    for name in ("text_pairs", "text_videos", "text.text_features"):
        tensors[name] = tensors[name][keep]
    save_file(tensors, str(shard), metadata=metadata)
    with pytest.raises(CacheError, match=r"no teacher outputs for 1 of its 8 pairs \(first: \[6\]\)"):
        TeacherCache(tmp_path, key, teacher, device=torch.device("cpu"))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / ".hf_home")}
    return subprocess.run(
        [sys.executable, str(REPO / "distill" / "run.py"), str(REPO / "recipes" / "demo.yaml"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> Path:
    """A random tiny teacher; distillation with it online and from its cache, through the CLI."""
    tmp = tmp_path_factory.mktemp("runs")
    save_teacher(tiny_teacher("seqTransf"), tmp / "teacher.safetensors")
    common = [f"data.root={data}", f"teacher.source={tmp / 'teacher.safetensors'}", "teacher.max_frames=4", *TINY]
    online = run_cli(f"output_dir={tmp / 'online'}", "stages=[distill,export]", *common, cwd=tmp)
    assert online.returncode == 0, online.stderr[-3000:]
    assert "teacher outputs from" not in online.stdout
    cached = run_cli(f"output_dir={tmp / 'cached'}", "stages=[cache,distill,export]", *common, cwd=tmp)
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert f"distill: teacher outputs from {tmp / 'cached' / 'teacher_cache'}" in cached.stdout
    assert list((tmp / "cached" / "logs").rglob("events.out.tfevents.*"))  # log_with: tensorboard
    return tmp


def test_distillation_from_the_cache_equals_online_distillation(runs):
    logs = [
        [json.loads(line) for line in (runs / name / "distill_log.jsonl").read_text().splitlines()]
        for name in ("online", "cached")
    ]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4, 5, 6]
    for online, cached in zip(*logs):
        # Epochs end at steps 3 and 6 (48 pairs, batches of 16), with R@1 on the validation pairs.
        validation = {f"val_{model}_{direction}_R1" for model in ("teacher", "student") for direction in ("t2v", "v2t")}
        validation = validation if cached["step"] in (3, 6) else set()
        assert set(cached) == {
            "step",
            "loss",
            "lr",
            "kl_loss",
            "feature_loss",
            "cross_loss",
            "contrastive_loss",
            "clips_per_s",
            *validation,
        }
        for term in ("kl_loss", "feature_loss", "cross_loss", "contrastive_loss", *validation):
            assert cached[term] == pytest.approx(online[term], rel=1e-5, abs=1e-6), (cached["step"], term)
    a, b = (load_file(runs / name / "student.safetensors") for name in ("online", "cached"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


def opened(recipe) -> Run:
    """A started run with its datasets open, as the stages after data and prepare see it."""
    run = start_run(recipe)
    run.data = open_datasets(run)
    return run


def test_checkpoint_settings_hold_what_shapes_training_not_its_cadence(data, tmp_path):
    """What a resume is checked against (distill.training.checkpoints): the recipe's training keys, the train pairs,
    their sampling and the teachers by their weights; not checkpoint or log cadence, micro-batches or paths."""
    save_teacher(tiny_teacher("seqTransf"), tmp_path / "teacher.safetensors")
    save_teacher(tiny_teacher("meanP"), tmp_path / "other.safetensors")
    given = [f"data.root={data}", f"output_dir={tmp_path / 'run'}", "stages=[distill]", *TINY]
    first = [*given, f"teacher.source={tmp_path / 'teacher.safetensors'}"]

    def settings(overrides, sections=("student", "loss", "train")):
        run = opened(load_recipe(REPO / "recipes" / "demo.yaml", overrides))
        teachers = [] if sections == ("teacher",) else [run.teacher, *run.ensemble]  # as the stages pass them
        return checkpoint_settings(run, sections, teachers), run

    found, run = settings([*first, "train.checkpoint_every=5"])
    assert found["loss.feature_weight"] == 4.0 and found["train.lr"] == run.recipe.train.lr and found["seed"] == 0
    assert found["student.init"] is False and found["data.dataset.pairs"] == len(run.data["train"])
    assert found["data.sampling.max_frames"] == run.recipe.teacher.max_frames
    assert found["teachers.count"] == 1 and found["teachers.0.sha256"] == teacher_key(run.teacher)["sha256"]
    assert not {"train.checkpoint_every", "train.resume", "train.accumulate"} & found.keys()
    cadence = ["train.checkpoint_every=7", "train.resume=auto", "train.log_every=1", "train.accumulate=2"]
    assert settings([*first, *cadence])[0] == found

    def changed(*overrides):
        other = settings([*first, *overrides])[0]
        return sorted(key for key in found.keys() | other.keys() if found.get(key) != other.get(key))

    assert changed("loss.kl_weight=2") == ["loss.kl_weight"]
    assert changed("student.backbone_kwargs={depth: 2, drop_path_rate: 0.1}") == ["student.backbone_kwargs"]
    assert changed("data.val_fraction=0.3") == ["data.dataset.pairs", "data.dataset.sha256", "data.dataset.videos"]
    member = ["teachers.1.precision", "teachers.1.sha256", "teachers.1.sim_header"]
    assert changed(f"teacher.ensemble=[{tmp_path / 'other.safetensors'}]") == [*member, "teachers.count"]
    assert changed(f"teacher.source={tmp_path / 'other.safetensors'}") == ["teachers.0.sha256", "teachers.0.sim_header"]
    moved = tmp_path / "moved"  # a data root copied elsewhere: the same pairs
    shutil.copytree(data, moved)
    assert settings([*first, f"data.root={moved}"])[0] == found
    teacher, _ = settings(first, ("teacher",))
    assert teacher["teacher.init"] is False and teacher["teacher.train.lr"] == 1e-3
    assert not {"teacher.source", "teacher.cache", "teacher.train.resume"} & teacher.keys()
    assert not any(key.startswith("teachers") for key in teacher)


def test_a_run_hashes_a_teacher_once_until_its_weights_change(data, tmp_path):
    """The cache, the checkpoint settings and the export name a teacher by `Run.teacher_key`: its weights are
    hashed once while they stay as they are; written in place (trained with `teacher.init`, then frozen
    again, or loaded back) the key follows them."""
    save_teacher(tiny_teacher("seqTransf"), tmp_path / "teacher.safetensors")
    recipe = [
        f"data.root={data}",
        f"output_dir={tmp_path / 'run'}",
        f"teacher.source={tmp_path / 'teacher.safetensors'}",
    ]
    run = start_run(load_recipe(REPO / "recipes" / "demo.yaml", [*recipe, *TINY]))
    key = run.teacher_key(run.teacher)
    hashed = run.weight_hashes[run.teacher]
    assert key == teacher_key(run.teacher) and run.teacher_key(run.teacher) == key
    assert run.weight_hashes[run.teacher] is hashed  # not hashed again
    weights = {k: v.clone() for k, v in run.teacher.state_dict().items()}
    trained = run.teacher.trainable()  # the same object, as the teacher stage trains it in place
    with torch.no_grad():
        trained.clip.logit_scale.add_(1.0)
    trained.requires_grad_(False)  # frozen again, the weights moved
    assert run.teacher_key(trained)["sha256"] != key["sha256"] and run.teacher_key(trained) == teacher_key(trained)
    trained.load_state_dict(weights)
    assert run.teacher_key(trained) == key


def test_distillation_from_the_cache_reads_no_teacher_view_and_refuses_another_sampling(runs, data):
    common = [
        f"data.root={data}",
        f"teacher.source={runs / 'teacher.safetensors'}",
        f"output_dir={runs / 'cached'}",
        "stages=[distill]",
        *TINY,
    ]
    recipe_path = REPO / "recipes" / "demo.yaml"
    run = opened(load_recipe(recipe_path, [*common, "teacher.max_frames=4"]))
    teacher, views = teacher_outputs(run)
    assert isinstance(teacher, TeacherCache) and views == ("student",)
    assert not any(key.startswith("teacher_") for key in run.data["train"].select_views(views)[0])

    run = opened(load_recipe(recipe_path, [*common, "teacher.max_frames=2", "data.max_words=16"]))
    with pytest.raises(CacheError) as error:
        distill(run)
    message = str(error.value)
    assert message.startswith(f"distill: teacher cache {runs / 'cached' / 'teacher_cache'} was made for another run")
    for part in (
        "sampling.max_frames: 4 in the cache, 2 in this run",
        "sampling.max_words: 32 in the cache, 16 in this run",
        "set teacher.cache=false",
    ):
        assert part in message
    run = opened(load_recipe(recipe_path, [*common, "teacher.max_frames=2", "teacher.cache=false"]))
    assert isinstance(teacher_outputs(run)[0], OnlineTeacher)


def test_an_ensemble_is_cached_per_teacher_and_distils_as_online(data, runs):
    """teacher.ensemble: a second tiny teacher (other weights) gets its own cache folder; the student
    distilled from both caches equals the one distilled with both teachers online, and its KL term is not
    the single teacher's."""
    torch.manual_seed(1)
    second = CLIP4Clip(tiny_teacher("meanP").arch)
    save_teacher(second, runs / "second.safetensors")
    common = [
        f"data.root={data}",
        f"teacher.source={runs / 'teacher.safetensors'}",
        f"teacher.ensemble=[{runs / 'second.safetensors'}]",
        "teacher.max_frames=4",
        *TINY,
    ]
    online = run_cli(f"output_dir={runs / 'ensemble_online'}", "stages=[distill,export]", *common, cwd=runs)
    assert online.returncode == 0, online.stderr[-3000:]
    cached = run_cli(f"output_dir={runs / 'ensemble_cached'}", "stages=[cache,distill,export]", *common, cwd=runs)
    assert cached.returncode == 0, cached.stderr[-3000:]
    for folder in ("teacher_cache", "teacher_cache_1"):
        assert f"distill: teacher outputs from {runs / 'ensemble_cached' / folder}" in cached.stdout
    logs = [
        [json.loads(line) for line in (runs / name / "distill_log.jsonl").read_text().splitlines()]
        for name in ("ensemble_online", "ensemble_cached", "cached")
    ]
    for online_record, cached_record in zip(logs[0], logs[1]):
        for term in ("kl_loss", "feature_loss", "contrastive_loss"):
            assert cached_record[term] == pytest.approx(online_record[term], rel=1e-5, abs=1e-6), term
    # Step 1, the same student as the single-teacher run: features match the first teacher, the KL both.
    first, single = logs[1][0], logs[2][0]
    assert first["feature_loss"] == pytest.approx(single["feature_loss"], rel=1e-6)
    assert first["kl_loss"] != pytest.approx(single["kl_loss"], rel=1e-3)
    a, b = (load_file(runs / name / "student.safetensors") for name in ("ensemble_online", "ensemble_cached"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


def test_an_ensemble_teacher_of_another_input_size_stops_the_run(data, tmp_path):
    other = CLIP4Clip(teacher_arch(TeacherConfig(image_size=32, vision_width=64, vision_layers=1), max_words=32))
    save_teacher(tiny_teacher("meanP"), tmp_path / "first.safetensors")
    save_teacher(other, tmp_path / "other.safetensors")
    overrides = [
        f"data.root={data}",
        f"output_dir={tmp_path / 'run'}",
        f"teacher.source={tmp_path / 'first.safetensors'}",
        f"teacher.ensemble=[{tmp_path / 'other.safetensors'}]",
        "stages=[distill]",
    ]
    with pytest.raises(ValueError, match=r"teacher.ensemble\[0\]: .*other.safetensors reads 32 px frames, the first"):
        start_run(load_recipe(REPO / "recipes" / "demo.yaml", overrides))
    assert not (tmp_path / "run").exists()  # checked before the run folder (recipe.yaml, trackers) is made
    with pytest.raises(ValueError, match=r"teacher.ensemble\[0\]: no such file: .*missing"):
        load_recipe(REPO / "recipes" / "demo.yaml", [*overrides[:3], "teacher.ensemble=[missing.safetensors]"])


def test_a_teacher_trained_here_is_fed_the_frames_it_learnt_on(data, tmp_path):
    """A teacher file of this toolkit carries its recipe; a run that would give it another number of frames a
    clip stops before it writes anything, naming the key and the value to set. A teacher to fine-tune
    (`teacher.init`) may learn other frames, and a file without a recipe is not checked."""
    trained = load_recipe(REPO / "recipes" / "demo.yaml", [*TINY, "teacher.max_frames=4"])
    path, plain = tmp_path / "teacher.safetensors", tmp_path / "plain.safetensors"
    save_teacher(tiny_teacher("seqTransf"), path, recipe=json.dumps(recipe_to_dict(trained)))
    save_teacher(tiny_teacher("seqTransf"), plain)
    given = [f"data.root={data}", f"output_dir={tmp_path / 'run'}", "stages=[distill]", *TINY]
    demo = REPO / "recipes" / "demo.yaml"
    for key, source in (
        ("teacher.source", [f"teacher.source={path}"]),
        ("teacher.ensemble[0]", [f"teacher.source={plain}", f"teacher.ensemble=[{path}]"]),
    ):
        message = f"{key}: {path} was trained on 4 frames a clip and this run gives it 2; set teacher.max_frames=4"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            start_run(load_recipe(demo, [*given, *source, "teacher.max_frames=2"]))
        assert not (tmp_path / "run").exists()
    for source, frames in ((path, 4), (plain, 2)):
        run = start_run(load_recipe(demo, [*given, f"teacher.source={source}", f"teacher.max_frames={frames}"]))
        assert open_datasets(run)["train"].views["teacher"].max_frames == frames
    fine_tune = [f"data.root={data}", f"output_dir={tmp_path / 'tune'}", "stages=[teacher]", *TINY]
    run = start_run(load_recipe(demo, [*fine_tune, f"teacher.init={path}", "teacher.max_frames=2"]))
    assert open_datasets(run)["train"].views["teacher"].max_frames == 2
