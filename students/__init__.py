"""Compact students: a timm frame encoder, a temporal head, a small text transformer; export and reload.

The names below load their modules (torch, timm, open_clip) on first use, so that `python -m students.onnx
--help` answers before any of them is imported.
"""

import importlib

_HOMES = {
    "export_file": "students.export",
    "export_student": "students.export",
    "load_student": "students.export",
    "read_metadata": "students.export",
    "round_weights": "students.export",
    "Student": "students.model",
    "check_inheritance": "students.model",
    "check_student": "students.model",
    "inherited_text_tower": "students.model",
    "teacher_text_sizes": "students.model",
    "teacher_text_tower": "students.model",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'students' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
