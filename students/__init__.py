"""Compact students: a timm frame encoder, a temporal head, a small text transformer; export and reload."""

from students.export import export_file, export_student, load_student, read_metadata, round_weights
from students.model import (
    Student,
    check_inheritance,
    check_student,
    inherited_text_tower,
    teacher_text_sizes,
    teacher_text_tower,
)

__all__ = [
    "Student",
    "check_inheritance",
    "check_student",
    "export_file",
    "export_student",
    "inherited_text_tower",
    "load_student",
    "read_metadata",
    "round_weights",
    "teacher_text_sizes",
    "teacher_text_tower",
]
