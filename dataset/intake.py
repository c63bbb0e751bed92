"""The dataset stage in one call: fetch, extract safely into the work dir, validate, report."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from ..core.dataset_report import DatasetError, DatasetReport
from ..core.hashing import sha256_file
from .caption_tokenizers import find_caption_tokenizers
from .extract import ExtractLimits, is_archive, left_in_archive, safe_extract
from .fetch import cache_key, classify_source, download_drive, download_fsspec, download_http
from .formats import IMAGE_EXTENSIONS, is_image
from .validate import validate_folder

__all__ = ["DatasetError", "DatasetReport", "ExtractLimits", "locate_dataset", "prepare_dataset"]


def prepare_dataset(
    source: str,
    work_dir: Path,
    *,
    resolution: int = 768,
    min_bucket_reso: int = 256,
    max_bucket_reso: int = 4096,
    bucket_reso_steps: int = 64,
    repeats: int = 5,
    limits: ExtractLimits | None = None,
    models_dir: str | Path | None = None,
    base_model: str | None = None,
) -> DatasetReport:
    """Fetch and validate `source`; return the report of what will be trained.

    Caption tokens are counted with the tokenizers of `models_dir`, else of the downloaded models
    of `base_model` (default: the default base model), else estimated.

    Raises:
        DatasetError: the source is missing, unsafe or unreadable, or holds no trainable image
            (then `.report` says why each file was skipped).
        UserInputError: `models_dir` holds no usable tokenizers.
        FetchError: the network kept failing (worth a retry).
    """
    tokenizers = find_caption_tokenizers(models_dir, base_model)
    root = locate_dataset(source, Path(work_dir), limits)
    extracted = root.resolve().is_relative_to((Path(work_dir) / "datasets").resolve())  # a user's folder has no such list
    report = validate_folder(
        root, resolution=resolution, min_bucket_reso=min_bucket_reso, max_bucket_reso=max_bucket_reso,
        bucket_reso_steps=bucket_reso_steps, repeats=repeats, source=source, left_in_archive=left_in_archive(root) if extracted else (),
        tokenizers=tokenizers,
    )
    if not report.images:
        raise DatasetError(_nothing_to_train(report), report)
    return report


def locate_dataset(source: str, work_dir: Path, limits: ExtractLimits | None = None) -> Path:
    """The local folder holding the dataset: a local folder as is (read in place), else a copy in work_dir."""
    src = classify_source(source)
    downloads = work_dir / "downloads"
    if src.kind == "folder":
        return _maybe_extract_single_archive(Path(src.value), work_dir, limits)
    if src.kind == "file":
        return extract_to_work_dir(Path(src.value), work_dir, limits)
    if src.kind == "http":
        archive = download_http(src.value, downloads / cache_key(src.value) / _url_file_name(src.value))
        return extract_to_work_dir(archive, work_dir, limits)
    if src.kind in ("drive-file", "drive-folder"):
        folder = src.kind == "drive-folder"
        got = download_drive(src.value, downloads / f"drive-{src.value}", folder=folder)
        return _maybe_extract_single_archive(got, work_dir, limits) if folder else extract_to_work_dir(got, work_dir, limits)
    got = download_fsspec(src.value, downloads / cache_key(src.value))
    if got.is_dir():
        return _maybe_extract_single_archive(got, work_dir, limits)
    return extract_to_work_dir(got, work_dir, limits)


def extract_to_work_dir(archive: Path, work_dir: Path, limits: ExtractLimits | None = None) -> Path:
    """Extract into work_dir/datasets/<content hash>, so two datasets never mix; reuse it if present.

    Raises:
        DatasetError: not an archive, or an unsafe/unreadable one.
    """
    if not is_archive(archive):
        if _is_web_page(archive):
            raise DatasetError(f"{archive.name} is a web page (HTML), not an archive; use the file's direct download link, not its share page")
        if archive.suffix.lower() in (".zip", ".tar", ".gz", ".tgz"):
            raise DatasetError(f"{archive.name} is not a readable archive (corrupt or cut short); download or zip it again")
        raise DatasetError(f"{archive.name} is neither a folder nor a .zip/.tar archive; pass a folder of images or a .zip of it")
    dest = work_dir / "datasets" / sha256_file(archive)[:16]
    if dest.is_dir():  # safe_extract renames a finished extraction into place, so this one is whole
        return dest
    return safe_extract(archive, dest, limits)


def _maybe_extract_single_archive(folder: Path, work_dir: Path, limits: ExtractLimits | None) -> Path:
    """A folder that holds one archive and no image (a shared Drive folder with a zip) means that archive."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    archives = [p for p in files if p.suffix.lower() in (".zip", ".tar", ".tgz", ".gz")]
    if len(archives) == 1 and not any(is_image(p) for p in files) and not any(p.is_dir() for p in folder.iterdir()):
        return extract_to_work_dir(archives[0], work_dir, limits)
    return folder


def _is_web_page(path: Path) -> bool:
    """True for an HTML file: what a share page or a login wall saves when a server mislabels it."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _url_file_name(url: str) -> str:
    name = Path(unquote(urlparse(url).path)).name
    return name if name and not name.startswith(".") else "dataset.zip"


def _nothing_to_train(report: DatasetReport) -> str:
    accepted = " ".join(sorted(IMAGE_EXTENSIONS))
    if not report.problems:
        return f"no images found in {report.root}; the trainer loads {accepted} files (with .txt captions of the same name)"
    first = report.problems[0]
    return (
        f"no trainable image in {report.root}: all {len(report.problems)} images were skipped "
        f"(first: {first.file}: {first.reason}); fix them or add {accepted} images"
    )
