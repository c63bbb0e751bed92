"""Sample prompt files: one prompt per line, with sd-scripts' per-line options.

The syntax is sd-scripts' (`library/train_util.py::line_to_prompt_dict` at 48d368fa): the prompt, then
options each introduced by " --": `--w` width, `--h` height, `--s` steps, `--d` seed, `--l` CFG scale,
`--n` negative prompt, and `--fs` flow shift (Anima's sampler reads it). Blank lines and lines that
start with `#` are skipped, as sd-scripts does. sd-scripts logs and ignores what it cannot parse; here
an unknown option or a bad value is refused with its line number, since a silently ignored `--w 1024`
gives a sample of the wrong size an hour later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError, setting

MAX_SIDE = 4096
MAX_STEPS = 1000  # sd-scripts clamps to 1..1000


@dataclass(frozen=True)
class SamplePrompt:
    """One sample: None means the sampler's default for that option."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    guidance: float | None = None  # classifier-free guidance scale (`--l`)
    flow_shift: float | None = None


def _int(text: str, low: int, high: int) -> int:
    value = int(text)  # ValueError for "12.5", "abc": reported by the caller with the line
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}..{high}")
    return value


def _float(text: str, low: float, high: float) -> float:
    value = float(text)
    if not low <= value <= high:  # also refuses nan
        raise ValueError(f"{text} is outside {low:g}..{high:g}")
    return value


# option -> (SamplePrompt field, parser of its value)
_OPTIONS = {
    "w": ("width", lambda v: _int(v, 64, MAX_SIDE)),
    "h": ("height", lambda v: _int(v, 64, MAX_SIDE)),
    "s": ("steps", lambda v: _int(v, 1, MAX_STEPS)),
    "d": ("seed", lambda v: _int(v, 0, 2**63 - 1)),
    "l": ("guidance", lambda v: _float(v, 0.0, 100.0)),
    "n": ("negative_prompt", str),
    "fs": ("flow_shift", lambda v: _float(v, 0.0, 100.0)),
}


def parse_sample_prompts(text: str, source: str) -> list[SamplePrompt]:
    """Every prompt of a prompt file's text; `source` names the file in errors.

    Raises:
        UserInputError: an unknown option, a bad value, an empty prompt, or no prompt at all.
    """
    prompts = []
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prompt, *options = line.split(" --")
        fields: dict = {"prompt": prompt.strip()}
        if not fields["prompt"] or line.startswith("--"):
            raise _bad(source, number, "the line has options but no prompt before them")
        for option in options:
            name, _, value = option.strip().partition(" ")
            if name.lower() not in _OPTIONS:
                known = " ".join(f"--{k}" for k in _OPTIONS)
                raise _bad(source, number, f"unknown option --{name} (known: {known})")
            field, parse = _OPTIONS[name.lower()]
            if not value.strip():
                raise _bad(source, number, f"--{name} needs a value")
            try:
                fields[field] = parse(value.strip())
            except ValueError as exc:
                raise _bad(source, number, f"--{name} {value.strip()}: {exc}") from None
        prompts.append(SamplePrompt(**fields))
    if not prompts:
        raise UserInputError(
            f"{setting('sample_prompts')}: {source} has no prompt (one per line; blank lines and # comments are skipped)",
            field="sample_prompts",
        )
    return prompts


def read_sample_prompts(path: str | Path) -> list[SamplePrompt]:
    """parse_sample_prompts of a file (UTF-8).

    Raises:
        UserInputError: the file cannot be read or is not UTF-8 text, or parse_sample_prompts refuses it.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UserInputError(
            f"{setting('sample_prompts', str(path))}: cannot read it ({reason}); give a UTF-8 text file with one prompt per line",
            field="sample_prompts",
        ) from None
    return parse_sample_prompts(text, str(path))


def to_sd_scripts_line(p: SamplePrompt) -> str:
    """The prompt as one line of an sd-scripts prompt file (the options it reads for Anima)."""
    parts = [p.prompt]
    for option, (field, _) in _OPTIONS.items():
        value = getattr(p, field)
        if value not in (None, ""):
            parts.append(f"--{option} {value:g}" if isinstance(value, float) else f"--{option} {value}")
    return " ".join(parts)


def _bad(source: str, number: int, reason: str) -> UserInputError:
    return UserInputError(f"{setting('sample_prompts')}: {source} line {number}: {reason}", field="sample_prompts")
