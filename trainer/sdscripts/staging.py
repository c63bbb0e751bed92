"""The dataset as sd-scripts reads it: a staged folder in the work dir holding exactly the validated items.

kohya scans each subset's `image_dir` itself. Pointed at the user's folder it would read back what
the validator skipped (a caption linked to /etc/passwd becomes a caption and lands in the LoRA's tag
metadata; a duplicate trains twice) and train EXIF-rotated photos sideways. The stage holds one folder
per kohya subset (a source folder and its repeats): `subsets/<n>/<the source folder's name>`, the name
kept because kohya keys its tag counts by it, and nothing but files inside, so no subfolder is globbed
as an image (a folder `x.png/` matches kohya's `*.png`). In each:

- each validated image as a hard link to its real file inside the dataset root, else a symlink to it
  (another filesystem, or a file the user may not hard-link), else a copy; no bytes are copied where
  a link works;
- an upright PNG instead, for an image whose EXIF orientation turns it (the one rule of
  core/orientation.py, so both backends train the same pixels);
- beside each image, a UTF-8 caption file with the text the validator read, so kohya reads nothing
  from the user's folder but the validated images.

A stage is keyed by the dataset's real root and fingerprint: a rerun on an unchanged dataset reuses it
without touching a file, and a changed dataset gets a new one (the old stage of that root is removed).
The user's folder is only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from ...core.dataset_report import DatasetError, DatasetReport, ImageRecord
from ...core.orientation import exif_orientation, upright
from ...errors import UserInputError, setting

STAGE_VERSION = 1  # bump when the layout or the file rules change, so old stages are not reused
MANIFEST = "manifest.json"
SUBSETS = "subsets"
# Modes a PNG stores as they are; others (CMYK) become RGB, as both trainers convert them on load.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


@dataclass(frozen=True)
class StagedDataset:
    """Where sd-scripts reads the dataset: the folder holding the subsets and one (folder, repeats) per kohya subset."""

    root: Path
    subsets: list[tuple[str, int]]
    reused: bool = False


def stage_dataset(report: DatasetReport, work_dir: Path, folder: str = "datasets") -> StagedDataset:
    """Stage the report's trainable images and captions under `work_dir`/sd-scripts/`folder`/, or reuse
    the stage made for the same dataset root and fingerprint.

    Raises:
        DatasetError: an image left the dataset root or changed since it was validated.
        UserInputError: the work dir is inside the dataset folder.
    """
    real_root = Path(report.root).resolve()
    base = Path(work_dir) / "sd-scripts" / folder
    if base.resolve().is_relative_to(real_root):  # the stage would be written into the user's folder, and validated next run
        raise UserInputError(f"{setting('work_dir', work_dir)} is inside the dataset folder {report.root}: the sd-scripts "
                             f"backend stages a copy of the dataset in the work folder; pass a {setting('work_dir')} outside "
                             "the dataset", field="work_dir")
    key = hashlib.sha256(f"{STAGE_VERSION}\0{real_root}\0{report.fingerprint}".encode()).hexdigest()[:16]
    final = base / key
    found = _load(final)
    if found is not None:
        return StagedDataset(found.root, found.subsets, reused=True)
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
    try:
        files, subsets = _fill(scratch / SUBSETS, report, real_root)
        manifest = {"version": STAGE_VERSION, "root": str(real_root), "fingerprint": report.fingerprint,
                    "subsets": subsets, "files": files}
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        _move_into_place(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    _remove_older_stages(base, key, str(real_root))
    staged = _load(final)
    if staged is None:  # another process replaced it between the rename and this read
        raise DatasetError(f"the staged dataset {final} changed while it was written; run again")
    return staged


VALIDATION_FOLDER = "validation"


def validation_images(report: DatasetReport, seed: int) -> tuple[list[ImageRecord], bool]:
    """The images the validation loss is measured on, chosen as the native trainer chooses them
    (trainer/validation.py): some of the held-out images, else a fixed few training images; and
    whether they are held out."""
    from ..validation import choose, image_limit  # noqa: PLC0415 - the same choice; torch only when staging

    held_out = bool(report.held_out)
    pool = report.held_out if held_out else report.images
    chosen = choose([record.sha256 for record in pool], seed, image_limit(report.samples_per_epoch))
    return [pool[i] for i in chosen], held_out


def stage_validation(report: DatasetReport, work_dir: Path, seed: int) -> StagedDataset | None:
    """Stage the validation images (validation_images) under `work_dir`/sd-scripts/validation/, each once;
    None when there is none.

    sd-scripts at 48d368fa reads a validation set only as a dataset's `validation_split`: the caller
    gives this stage its own dataset with a split of 1.0, so sd-scripts validates on these images and
    trains on none of them (a held-out image is not in the training stage; a training-subset image is
    trained through the training stage as before).
    """
    images, _ = validation_images(report, seed)
    if not images:
        return None
    # Absolute paths: held-out images of a validation dataset are outside the training root.
    records = [r.model_copy(update={"path": str(Path(report.root, r.path)), "repeats": 1}) for r in images]
    root = os.path.commonpath([str(Path(r.path).resolve().parent) for r in records])
    identity = "\0".join(sorted(f"{r.path}\0{r.sha256}\0{r.caption}" for r in records))
    chosen = report.model_copy(update={
        "root": root, "images": records, "held_out": [], "fingerprint": hashlib.sha256(identity.encode()).hexdigest(),
    })  # fmt: skip
    return stage_dataset(chosen, work_dir, folder=VALIDATION_FOLDER)


def _fill(top: Path, report: DatasetReport, real_root: Path) -> tuple[list[list[str]], list[list]]:
    """Link, turn and caption every trainable image into its subset folder under `top`; return (files, subsets)
    for the manifest, paths relative to `top`."""
    files: list[list[str]] = []
    subsets: dict[str, tuple[str, int]] = {}  # source folder -> (staged folder, repeats)
    names: dict[str, _FolderNames] = {}
    for record in report.images:
        rel = PurePosixPath(record.path)
        source_folder = rel.parent.as_posix()
        if source_folder not in subsets:
            name = rel.parent.name or real_root.name or "dataset"
            subsets[source_folder] = ((PurePosixPath(str(len(subsets))) / name).as_posix(), int(record.repeats))
            names[source_folder] = _FolderNames()
        staged_folder = subsets[source_folder][0]
        folder = top / staged_folder
        folder.mkdir(parents=True, exist_ok=True)
        real = _validated_file(Path(report.root) / rel, real_root, record.path)
        turned = _orientation(real) != 1
        suffix = ".png" if turned else rel.suffix.lower()  # lower case: kohya globs .png/.PNG, never .Png
        stem = names[source_folder].claim(rel.stem, suffix, record.caption)
        image = folder / (stem + suffix)
        how = _write_upright(real, image, record) if turned else _link(real, image)
        # kohya reads the first line of the file and asserts on an empty file; a lone newline is its
        # empty caption (no file would let it fall back to another image's caption for long names).
        (folder / f"{stem}.txt").write_bytes((record.caption + "\n").encode("utf-8"))
        files.append([f"{staged_folder}/{image.name}", record.path, how])
    return files, [[folder, repeats] for folder, repeats in subsets.values()]


class _FolderNames:
    """Staged names in one folder: unique even where the filesystem ignores case, and one caption per stem.

    kohya pairs an image with `stem.txt`, so two images may share a stem only when they share the caption
    (img0.png and img0.jpg, as the validator pairs them); an upright `p.jpg` staged as PNG beside a `p.png`
    gets `p~2.png`.
    """

    def __init__(self):
        self.names: set[str] = set()
        self.captions: dict[str, str] = {}

    def claim(self, stem: str, suffix: str, caption: str) -> str:
        candidate, n = stem, 1
        while (f"{candidate}{suffix}".casefold() in self.names
               or self.captions.get(candidate.casefold(), caption) != caption):
            n += 1
            candidate = f"{stem}~{n}"
        self.names.add(f"{candidate}{suffix}".casefold())
        self.captions[candidate.casefold()] = caption
        return candidate


def _validated_file(path: Path, real_root: Path, name: str) -> Path:
    """The real path of a validated image, still a regular file inside the dataset root.

    Raises:
        DatasetError: it was turned into a link leading out, or removed, since the validation.
    """
    real = path.resolve()
    if not real.is_relative_to(real_root) or not real.is_file():
        raise DatasetError(f"{name} changed since the dataset was validated (it now leaves the dataset folder or is gone); "
                           "run again to validate the dataset as it is now")
    return real


def _orientation(path: Path) -> int:
    with Image.open(path) as img:  # the header and EXIF only; nothing is decoded
        return exif_orientation(img)


def _link(real: Path, dest: Path) -> str:
    """Link `dest` to `real`: a hard link, else a symlink, else a copy; returns which."""
    try:
        os.link(real, dest)
        return "hardlink"
    except OSError:  # another filesystem (EXDEV), or a file the user may not hard-link (protected_hardlinks)
        pass
    try:
        os.symlink(real, dest)
        return "symlink"
    except OSError:  # a filesystem without symlinks (FAT, some FUSE mounts)
        shutil.copyfile(real, dest)
        return "copy"


def _write_upright(real: Path, dest: Path, record: ImageRecord) -> str:
    """An upright, untagged PNG of an EXIF-turned image (lossless, so the pixels are the native trainer's).

    Raises:
        DatasetError: the file's bytes are no longer the ones validated.
    """
    data = real.read_bytes()
    if hashlib.sha256(data).hexdigest() != record.sha256:
        raise DatasetError(f"{record.path} changed since the dataset was validated; run again to validate it as it is now")
    with Image.open(real) as img:
        img.load()
        turned = upright(img)
        if turned.mode not in _PNG_MODES:
            turned = turned.convert("RGB")
        turned.save(dest, "PNG")  # Pillow writes no EXIF to a PNG unless asked: nothing turns it again
    return "upright"


def _load(final: Path) -> StagedDataset | None:
    """The stage in `final` when it is whole (its manifest and every file it lists are there), else None."""
    try:
        manifest = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("version") != STAGE_VERSION:
        return None
    top = final / SUBSETS
    # exists() follows symlinks: a stage whose linked file was removed is made again.
    if not all(os.path.exists(top / staged) for staged, _, _ in manifest["files"]):
        return None
    return StagedDataset(top, [(str(top / folder), int(repeats)) for folder, repeats in manifest["subsets"]])


def _move_into_place(scratch: Path, final: Path) -> None:
    """Rename the finished stage to its key; an incomplete one there is replaced, a whole one (another run's) kept."""
    try:
        os.rename(scratch, final)
        return
    except OSError:
        if _load(final) is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            return
    shutil.rmtree(final, ignore_errors=True)  # rmtree unlinks links; it never follows them into the user's folder
    os.rename(scratch, final)


def _remove_older_stages(base: Path, key: str, real_root: str) -> None:
    """Stages of earlier versions of this dataset root: their upright copies would pile up in the work dir."""
    for other in base.iterdir():
        if other.name == key or other.name.startswith(".") or not other.is_dir():
            continue
        try:
            manifest = json.loads((other / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if manifest.get("root") == real_root:
            shutil.rmtree(other, ignore_errors=True)
