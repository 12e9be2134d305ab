"""`distill.metrics`, the documented path of the retrieval metrics (they live in `distill.evaluation.metrics`)."""

from distill.evaluation.metrics import (  # noqa: F401
    Metrics,
    multi_sentence_metrics,
    multi_sentence_ranks,
    recall_curve,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
)
