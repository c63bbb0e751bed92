"""`anima-lora models download|list|verify`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserInputError

from ..core import backends, known_models
from .download import ensure_models
from .errors import ModelDownloadError
from .status import FileStatus, inspect_models

_HELP = {
    "download": "download (or copy from --durable-cache) and verify the model files",
    "list": "show the files a base model needs, their sizes and hashes, and what is already here",
    "verify": "re-hash the local model files; exit 1 if any is missing or damaged",
}


_LAYOUT_TEXT = {"diffusers": "takes a Diffusers folder", "single-files": "single files"}
_LAYOUTS = ", ".join(f"{b.name} {_LAYOUT_TEXT[b.model_layout]}" for b in backends.TABLE)


def add_models_parser(subparsers) -> None:
    """Register `models` with its three sub-commands on the CLI's subparsers."""
    parser = subparsers.add_parser("models", help="download, list or verify the Anima model files")
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="{download,list,verify}")
    for name, text in _HELP.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--base-model", default="anima-base-v1.0", choices=list(known_models.BASE_MODELS),
                         help="the model train's --base-model names (default: anima-base-v1.0)")
        sub.add_argument("--backend", default="native", choices=list(backends.NAMES),
                         help="the trainer the files are for, as train's --trainer: " + _LAYOUTS + " (default: native)")
        sub.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                         help="folder for the downloads (default: the HF cache)")
        sub.add_argument(
            "--durable-cache", default=None, metavar="PATH_OR_URL",
            help="durable copy (e.g. /content/drive/MyDrive/anima-models) to reuse; train's --models-cache",
        )
        sub.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    """0 ok, 1 runtime failure (network, damaged files), 2 bad input; errors are one line on stderr."""
    try:
        if args.models_command == "download":
            return _download(args)
        rows = inspect_models(
            args.base_model,
            args.backend,
            args.cache_dir,
            check_hashes=args.models_command == "verify",
            durable_cache=args.durable_cache,
        )
        print(_table(rows))
        if args.models_command == "verify" and any(r.state != "verified" for r in rows):
            print(
                f"error: some files are missing or damaged; run: anima-lora models download --base-model {args.base_model} "
                f"--backend {args.backend}",
                file=sys.stderr,
            )
            return 1
        return 0
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ModelDownloadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _download(args: argparse.Namespace) -> int:
    paths = ensure_models(
        args.base_model, backend=args.backend, cache_dir=args.cache_dir, durable_cache=args.durable_cache
    )
    for name in ("diffusers_dir", "dit", "text_encoder", "vae"):
        if (value := getattr(paths, name)) is not None:
            print(f"{name}: {value}")
    return 0


def _table(rows: list[FileStatus]) -> str:
    lines = [f"{'state':<9} {'size':>9}  {'sha256':<13} file"]
    for r in rows:
        size = f"{r.size / 1e9:.2f} GB" if r.size and r.size >= 1e8 else (f"{r.size / 1e6:.1f} MB" if r.size else "?")
        sha = f"{r.sha256[:12]}…" if r.sha256 else "-"
        durable = "" if r.durable is None else ("  [durable copy]" if r.durable else "  [not in durable cache]")
        lines.append(f"{r.state:<9} {size:>9}  {sha:<13} {r.repo_id}/{r.filename}{durable}")
    return "\n".join(lines)
