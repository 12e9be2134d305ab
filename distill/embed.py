"""`distill.embed`, the documented path of the ship side's Python face (it lives in `distill.retrieval.embed`)."""

from distill.retrieval.embed import VideoEmbeddings, embed_texts, embed_videos  # noqa: F401
