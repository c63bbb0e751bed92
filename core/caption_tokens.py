"""Caption length in the text encoders' own tokens: what the text window keeps, and what it cuts.

Anima reads a caption twice: Qwen3's tokenizer feeds the text encoder and T5's tokenizer gives the
LLM adapter its target ids. trainer/cache.py's encode_caption truncates both at the window (the
text conditioner's min_sequence_length, 512), so a longer caption loses its end. The validator and
the cache stage count with the same tokenizers and the same window, so nothing is cut unannounced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WINDOW = 512  # Anima's min_sequence_length, used when the models are not here to say it


@dataclass(frozen=True)
class CaptionTokenizers:
    """Both tokenizers of a Diffusers-format Anima folder and the window the text stack truncates at."""

    qwen: Any
    t5: Any
    window: int
    source: str  # the folder they came from, for the report

    def count(self, caption: str) -> tuple[int, int]:
        """(Qwen3 tokens, T5 tokens) as encode_caption tokenizes the caption, before truncation."""
        return _count(self.qwen, caption), _count(self.t5, caption)

    def cut(self, caption: str) -> tuple[int, int, int]:
        """(Qwen3 tokens, T5 tokens, tokens cut): the tokens past the window, in the longer of the two."""
        qwen, t5 = self.count(caption)
        return qwen, t5, max(0, qwen - self.window, t5 - self.window)


def window_of(models_dir: Path) -> int:
    """The text window of a Diffusers-format Anima folder: its conditioner's min_sequence_length."""
    config = json.loads((Path(models_dir) / "text_conditioner" / "config.json").read_text())
    return int(config["min_sequence_length"])


def has_tokenizers(models_dir: Path) -> bool:
    return all((Path(models_dir) / name).is_dir() for name in ("tokenizer", "t5_tokenizer", "text_conditioner"))


def load_caption_tokenizers(models_dir: Path) -> CaptionTokenizers:
    """Load both tokenizers from local files only (no network).

    Raises:
        OSError: the folder lacks them or they are damaged.
    """
    models_dir = Path(models_dir)
    if not has_tokenizers(models_dir):
        raise OSError(f"{models_dir} has no tokenizer/, t5_tokenizer/ and text_conditioner/")
    return CaptionTokenizers(
        qwen=_load(models_dir / "tokenizer"), t5=_load(models_dir / "t5_tokenizer"), window=window_of(models_dir),
        source=str(models_dir),
    )


def _load(folder: Path) -> Any:
    """A folder's tokenizer.json through the `tokenizers` library, else transformers' AutoTokenizer.

    tokenizer.json is what transformers' fast tokenizers run, so both count the same tokens (with the
    same special tokens); reading it directly saves importing transformers and torch, seconds that
    `validate`, `plan` and `train --dry-run` would otherwise spend before saying anything.
    """
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # the Rust library raises a bare Exception for a damaged file
            raise ValueError(f"{folder / 'tokenizer.json'}: {exc}") from exc
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer
    from transformers import AutoTokenizer  # a slow (sentencepiece-only) tokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _count(tokenizer: Any, caption: str) -> int:
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return len(tokenizer.encode(caption).ids)
    # verbose=False: the count is the point, transformers' own "longer than" warning is noise here.
    return len(tokenizer([caption], verbose=False).input_ids[0])


def cut_reason(qwen: int, t5: int, cut: int, window: int) -> str:
    """One line for a caption longer than the window, in the validator's report and the cache stage's log."""
    return f"caption is {qwen} Qwen3 tokens ({t5} T5 tokens): the text encoder reads {window}, so its last {cut} are cut and not trained; shorten it"
