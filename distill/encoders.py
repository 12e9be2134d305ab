"""`distill.encoders`, the documented path of `load_encoder` (it lives in `distill.retrieval.encoders`)."""

from distill.retrieval.encoders import RUNTIMES, Encoder, OnnxEncoder, TorchEncoder, load_encoder  # noqa: F401
