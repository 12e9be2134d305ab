"""The CLIP4Clip tokenizer: CLIP BPE, start token, at most max_words-2 word pieces, end token, zero padding."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer


@lru_cache(maxsize=4)
def _tokenizer(max_words: int) -> SimpleTokenizer:
    # open_clip ships the BPE vocabulary in its wheel and truncates like CLIP4Clip: [SOT] + pieces + [EOT].
    return SimpleTokenizer(context_length=max_words)


def tokenize(captions: Sequence[str], max_words: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns `(input_ids, attention_mask)`, both int64 `[N, max_words]`; the mask is 1 on SOT..EOT."""
    input_ids = _tokenizer(max_words)(list(captions)).long()
    return input_ids, (input_ids != 0).long()


def pad_ids(input_ids: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pads `[N, L]` ids to `length` columns (CLIP text towers add every position embedding).

    Longer ids are an error rather than a crop: cropping could drop the EOT token the feature is read at.
    """
    if input_ids.shape[1] > length:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}: {input_ids.shape[1]} tokens, more than the "
            f"model's context length {length}; tokenize with max_words <= {length}"
        )
    return torch.nn.functional.pad(input_ids, (0, length - input_ids.shape[1]))
