"""Where the validator finds the caption tokenizers: the models folder given, else the downloaded base model."""

from __future__ import annotations

from pathlib import Path

from ..core.caption_tokens import CaptionTokenizers, has_tokenizers, load_caption_tokenizers
from ..errors import UserInputError, setting


def find_caption_tokenizers(models_dir: str | Path | None = None, base_model: str | None = None) -> CaptionTokenizers | None:
    """The tokenizers of `models_dir`, else of the downloaded Diffusers folder of `base_model`; None when neither is here.

    Raises:
        UserInputError: `models_dir` was given but holds no usable tokenizers.
    """
    if models_dir is not None:
        folder = Path(models_dir).expanduser()
        try:
            return load_caption_tokenizers(folder)
        except (OSError, ValueError, KeyError) as exc:
            raise UserInputError(
                f"{setting('models_dir', folder)} has no usable tokenizers ({exc}); point it at a Diffusers-format Anima folder",
                field="models_dir",
            ) from exc
    from ..config import TrainingConfig
    from ..models.download import ready_models

    paths = ready_models(base_model or TrainingConfig.model_fields["base_model"].default, "native")
    if paths is None or paths.diffusers_dir is None or not has_tokenizers(paths.diffusers_dir):
        return None
    try:
        return load_caption_tokenizers(paths.diffusers_dir)
    except (OSError, ValueError, KeyError):  # a damaged download: `models verify` will say so; estimate meanwhile
        return None
