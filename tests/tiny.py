"""Recipe overrides that shrink recipes/demo.yaml to a run of seconds, for the tests that use the CLI, and the
same student as a StudentConfig for the tests that build one.

Later overrides win, so a test adds what it needs after these.
"""

from distill.core.schema import StudentConfig

DATA = [
    "data.synthetic.num_train=56",
    "data.val_fraction=0.243",  # holds out 8 of the 56 clips (distill.data.splits): 48 train pairs
    "data.synthetic.num_test=16",
    "data.synthetic.size=32",
    "data.synthetic.seconds=4",
]
TEACHER = [
    "teacher.max_frames=4",
    "teacher.image_size=16",
    "teacher.vision_width=64",
    "teacher.vision_layers=1",
    "teacher.text_width=64",
    "teacher.text_layers=1",
    "teacher.cross_layers=1",
    "teacher.train.batch_size=16",
    "teacher.train.max_steps=6",
]
STUDENT = [
    "student.max_frames=3",
    "student.image_size=16",
    "student.embed_dim=32",
    "student.text_width=32",
    "student.text_layers=1",
    "student.text_heads=2",
    "student.backbone_kwargs={img_size: 16, patch_size: 8, depth: 1}",
]
# The fixed schedule: 6 steps exactly, whatever the demo's stopping rule (tests/test_schedule.py turns it on)
TRAIN = ["train.batch_size=16", "train.max_steps=6", "train.patience=0", "eval.batch_size=8"]
TINY = DATA + TEACHER + STUDENT + TRAIN


def student_config(**changes) -> StudentConfig:
    """The STUDENT overrides as a StudentConfig (16 px frames, one ViT block, 32 wide), with `changes`."""
    sizes = {
        "max_frames": 3,
        "image_size": 16,
        "embed_dim": 32,
        "text_width": 32,
        "text_layers": 1,
        "text_heads": 2,
        "backbone_kwargs": {"img_size": 16, "patch_size": 8, "depth": 1},
    }
    return StudentConfig(**{**sizes, **changes})
