"""clip4clip-distill: distil a frozen CLIP4Clip teacher into a small text-to-video retrieval student."""

__version__ = "0.1.0"
