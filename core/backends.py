"""The training backends' names and the facts every layer may read: plain data, no import of trainer/.

The one place a backend is listed. config validates `trainer` against NAMES (so the CLI's --trainer
choices and the flow's form follow it), models/ downloads the layout a backend reads, and
trainer/registry.py imports the implementation named here only when a run asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ModelLayout = Literal["diffusers", "single-files"]


@dataclass(frozen=True)
class BackendFacts:
    """`implementation`: "module:Class" of its trainer/backend.py Backend, the module relative to the package."""

    name: str
    model_layout: ModelLayout  # a Diffusers folder (text encoder and tokenizer inside) or the single .safetensors files
    implementation: str


TABLE: tuple[BackendFacts, ...] = (
    BackendFacts("native", "diffusers", "trainer.native:NativeBackend"),
    BackendFacts("sd-scripts", "single-files", "trainer.sdscripts.backend:SdScriptsBackend"),
)

NAMES: tuple[str, ...] = tuple(b.name for b in TABLE)
# The setting's type: a Literal built from the table, so pydantic and the CLI list exactly these names.
TrainerBackend = Literal[NAMES]  # type: ignore[valid-type]


def facts(name: str) -> BackendFacts:
    """Raises KeyError naming the known backends (config validation admits only these names)."""
    for entry in TABLE:
        if entry.name == name:
            return entry
    raise KeyError(f"no training backend named {name!r}; known: {', '.join(NAMES)}")


def model_layout(name: str) -> ModelLayout:
    return facts(name).model_layout
