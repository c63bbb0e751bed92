"""Validate a dataset folder against what the trainer really loads; read-only, returns a DatasetReport."""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from ..config import TrainingConfig
from ..core.buckets import Bucket, assign_bucket, cover_size, make_buckets
from ..core.caption_tokens import WINDOW, CaptionTokenizers, cut_reason
from ..core.dataset_report import DatasetError, DatasetReport, ImageRecord, Issue, bucket_histogram, fingerprint
from ..core.orientation import exif_orientation, upright_size
from ..errors import render, setting
from .formats import is_caption, is_image, is_junk

MIN_IMAGE_SIDE = 64  # below this an image carries no detail even in the smallest bucket
MAX_IMAGE_PIXELS = 8192 * 8192  # larger ones are decompression bombs or need downscaling first
MAX_CAPTION_TOKENS = WINDOW  # the text window when no tokenizer is here to count exactly
# No real tag list comes near this (the text window reads a few hundred tokens); a larger .txt is
# something else under that name (a zip's zeros, a log) and is skipped without being read whole.
MAX_CAPTION_BYTES = 64 * 1024
# C0 control characters other than tab, newline, CR, vertical tab and form feed: no editor writes them in
# text, and a NUL-filled file decodes (as UTF-16 or latin-1) to nothing else.
_NOT_TEXT = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
ESTIMATE_MARGIN = 0.75  # an estimate may be this far under the real count (long tags split into several BPE pieces)
# A kohya N_name folder obeys the same bound as --repeats (train refuses more).
MAX_REPEATS = next(r.le for r in TrainingConfig.model_fields["repeats"].metadata if getattr(r, "le", None) is not None)
# Images x repeats per epoch: the sampler holds one index per sample, and a million is weeks of training.
MAX_SAMPLES_PER_EPOCH = 1_000_000
UPSCALE_WARNING = 2.0  # images enlarged more than this to fill their bucket train blurry
CROP_WARNING = 0.30  # share of an image the bucket's centre crop may cut before the subject is likely gone
# Image files the trainers do not load: skipped, with a conversion hint.
UNSUPPORTED_IMAGES = frozenset({".gif", ".tif", ".tiff", ".avif", ".jxl", ".heic", ".heif", ".svg", ".ico", ".psd", ".jfif"})
_KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
_TOKEN_PIECES = re.compile(r"\d|[^\W\d_]+|[^\w\s]|_")  # digits and underscores count singly, as in BPE vocabularies
_MODE_NOTES = {
    "CMYK": "CMYK image: converted to RGB (colours may shift); export it as RGB",
    "P": "palette image: converted to RGB",
    "RGBA": "has an alpha channel: converted to RGB with transparency flattened on white",
    "LA": "has an alpha channel: converted to RGB with transparency flattened on white",
    "PA": "has an alpha channel: converted to RGB with transparency flattened on white",
    "1": "1-bit black-and-white image: converted to RGB",
}


class CaptionNotRead(Exception):
    """A caption file that is not read as text: `code` and `reason` go into the report's problems."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class ImageCheck:
    """What opening one image found: its content hash, size and mode, or why it cannot be used."""

    sha256: str
    width: int = 0
    height: int = 0
    mode: str = ""
    frames: int = 1
    error: tuple[str, str] | None = None  # (code, reason)
    orientation: int = 1  # EXIF; width and height above are already turned upright


def validate_folder(
    root: Path,
    *,
    resolution: int = 768,
    min_bucket_reso: int = 256,
    max_bucket_reso: int = 4096,
    bucket_reso_steps: int = 64,
    repeats: int = 5,
    source: str = "",
    left_in_archive: Sequence[PurePosixPath] = (),
    tokenizers: CaptionTokenizers | None = None,
) -> DatasetReport:
    """Check every file under `root` (never writing there) and return the report.

    `left_in_archive`: files of the source archive that extraction left out, reported with the rest.
    `tokenizers`: the model's, to count caption tokens exactly; without them the count is an estimate.
    """
    root = Path(root)
    images, captions, problems, warnings = _scan(root, left_in_archive)
    _check_folder_repeats(images, repeats)
    checks = _check_all([root / p for p in images])
    buckets = make_buckets(resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps)
    records: list[ImageRecord] = []
    seen: dict[str, str] = {}
    read: dict[tuple[str, str], str] = {}  # caption text per (folder, stem), shared by images with that stem
    unread_captions = {(PurePosixPath(p.file).parent.as_posix(), PurePosixPath(p.file).stem): p.file
                       for p in problems if is_caption(p.file)}
    folders: dict[str, list[int]] = defaultdict(list)
    for relpath, check in zip(images, checks):
        name = relpath.as_posix()
        problem = _image_problem(check, seen.get(check.sha256))
        times, folder_note = folder_repeats(relpath, repeats)
        if problem is None and times == 0:
            problem = ("zero-repeats", f"its folder {relpath.parent.as_posix()!r} asks for 0 repeats; rename it to N_name with N >= 1")
        if problem:
            problems.append(Issue(file=name, code=problem[0], reason=problem[1], verdict="skipped"))
            continue
        seen[check.sha256] = name
        key = (relpath.parent.as_posix(), relpath.stem)
        if key in unread_captions:  # the link or fifo is named among the problems; the image still trains
            why = f"its caption {unread_captions[key]} is not read (see the problems): trains with an empty caption"
            warnings.append(Issue(file=name, code="caption-not-read", reason=why, verdict="trained"))
            caption = ""
        else:
            caption = _caption_for(root, relpath, captions, read, problems, warnings, tokenizers)
        bucket = assign_bucket(check.width, check.height, buckets)
        warnings += _image_warnings(name, check, bucket)
        records.append(ImageRecord(path=name, caption=caption, width=check.width, height=check.height,
                                   bucket=bucket, repeats=times, sha256=check.sha256))
        if folder_note:
            folders[folder_note].append(times)
    skipped = {(PurePosixPath(p.file).parent.as_posix(), PurePosixPath(p.file).stem) for p in problems}
    orphans = sorted((c for key, c in captions.items() if key not in skipped and key not in read), key=str)  # a skipped image's caption says nothing new
    warnings += [Issue(file=str(c), code="orphan-caption", reason="caption without an image of the same name: ignored", verdict="ignored")
                 for c in orphans]
    warnings += _shared_stems(records, captions)
    warnings += _folder_notes(folders, repeats)
    _check_samples(records)
    return DatasetReport(
        root=str(root), source=source or str(root), resolution=resolution, images=records,
        problems=problems, warnings=warnings, tag_frequency=tag_frequency(r.caption for r in records),
        bucket_histogram=bucket_histogram(records), fingerprint=fingerprint(records),
    )


def _scan(root: Path, left_in_archive: Sequence[PurePosixPath] = ()) -> tuple[
    list[PurePosixPath], dict[tuple[str, str], PurePosixPath], list[Issue], list[Issue]
]:
    """Sort every file into images, captions (keyed by folder and stem), problems and ignored files.

    Only regular files whose real path stays inside the root are read: a link may point anywhere
    (`g0.txt -> /etc/passwd` would become a caption, printed and stored with the run).
    `left_in_archive` are the files extraction did not write (neither images nor their captions):
    they are reported as if they were here.
    """
    found, problems = [], []
    real_root = root.resolve()
    for folder, dirs, files in os.walk(root):  # never descends into linked folders (followlinks=False)
        rel_folder = PurePosixPath(Path(folder).relative_to(root).as_posix())
        dirs[:] = sorted(d for d in dirs if not is_junk(d) and not d.startswith("."))  # .ipynb_checkpoints, .git
        for d in [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            code, why = _unread_entry(Path(folder) / d, real_root, folder=True)
            problems.append(Issue(file=(rel_folder / d).as_posix() + "/", code=code, reason=why, verdict="skipped"))
            dirs.remove(d)
        for name in sorted(files):
            rel = rel_folder / name
            if is_junk(rel) or name.startswith("."):
                continue
            unread = _unread_entry(Path(folder) / name, real_root, folder=False)
            if unread:
                problems.append(Issue(file=rel.as_posix(), code=unread[0], reason=unread[1], verdict="skipped"))
            else:
                found.append(rel)
    images, captions, warnings = [], {}, []
    left = set(left_in_archive)
    for rel in found + list(left_in_archive):
        suffix = rel.suffix.lower()
        where = " (left in the archive)" if rel in left else ""
        if is_image(rel):
            images.append(rel)
        elif is_caption(rel):
            captions[(rel.parent.as_posix(), rel.stem)] = rel
        elif suffix in UNSUPPORTED_IMAGES:
            why = f"{suffix} images are not loaded by the trainer; convert it to PNG or JPEG{where}"
            problems.append(Issue(file=rel.as_posix(), code="unsupported-format", reason=why, verdict="skipped"))
        else:
            why = f"not an image or caption the trainer loads: ignored{where}"
            warnings.append(Issue(file=rel.as_posix(), code="ignored-file", reason=why, verdict="ignored"))
    return images, captions, problems, warnings


def _unread_entry(path: Path, real_root: Path, *, folder: bool) -> tuple[str, str] | None:
    """(code, reason) for an entry that is not read: a link leaving the root, a dangling link, not a regular file."""
    if folder:  # linked folders are never followed: their files would come from outside or be trained twice
        inside = path.resolve().is_relative_to(real_root)
        where = "inside the dataset (its files are read there)" if inside else "outside the dataset folder"
        return "linked-folder", f"a link to a folder {where}: not followed; copy the folder in instead of linking it"
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(real_root):
            return "link-outside", "a link to a file outside the dataset folder: not read; copy the file in instead of linking it"
        if not target.exists():
            return "broken-link", "a link to a file that does not exist: not read"
    if not path.is_file():  # a fifo or device file would block or stream forever on read
        return "not-a-file", "not a regular file (a pipe, socket or device): not read"
    return None


def _check_all(paths: list[Path]) -> list[ImageCheck]:
    # Pillow releases the GIL while decoding, so threads use every core without pickling costs.
    workers = min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check_image, paths, chunksize=16))


def check_image(path: Path) -> ImageCheck:
    """Hash, open, verify and fully decode one image (a truncated file only fails on a real load)."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height, mode = img.width, img.height, img.mode
            frames = getattr(img, "n_frames", 1)
            if width * height > MAX_IMAGE_PIXELS:
                return ImageCheck(digest, width, height, mode, error=("too-large", _too_many_pixels(width, height)))
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            (width, height), orientation = upright_size(img), exif_orientation(img)  # after verify(): reading EXIF may load
            if img.format == "JPEG":  # decode at 1/8 scale: every byte is still parsed, 10x faster
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except Image.DecompressionBombError:
        why = "declares far too many pixels (decompression bomb guard); downscale it if it is a real image"
        return ImageCheck(digest, error=("too-large", why))
    except Image.UnidentifiedImageError:
        return ImageCheck(digest, error=("unreadable", "not a readable image (unknown or damaged format); re-export it as PNG or JPEG"))
    except Exception as exc:  # noqa: BLE001  (Pillow's plugins raise many types for a corrupt file)
        if "truncated" in str(exc).lower():
            return ImageCheck(digest, error=("truncated", "file is truncated (an incomplete copy or download); copy or export it again"))
        return ImageCheck(digest, error=("unreadable", f"cannot be decoded ({type(exc).__name__}: {exc}); re-export it"))
    return ImageCheck(digest, width, height, mode, frames, orientation=orientation)


def _too_many_pixels(width: int, height: int) -> str:
    return f"{width}x{height} is over {MAX_IMAGE_PIXELS // 1_000_000} megapixels (decompression bomb guard); downscale it"


def _image_problem(check: ImageCheck, duplicate_of: str | None) -> tuple[str, str] | None:
    """(code, reason) when the image cannot be trained, else None."""
    if check.error:
        return check.error
    if min(check.width, check.height) < MIN_IMAGE_SIDE:
        return "too-small", f"{check.width}x{check.height} is too small (a side under {MIN_IMAGE_SIDE} px); use a larger image"
    if duplicate_of:
        return "duplicate", f"same content as {duplicate_of}: trained once, not twice"
    return None


def _image_warnings(name: str, check: ImageCheck, bucket: Bucket) -> list[Issue]:
    found = []
    if check.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        why = (f"high-bit-depth image (mode {check.mode}): scaled down to 8-bit RGB, so the extra depth is not trained; "
               "export it as 8-bit to control the conversion")
        found.append(Issue(file=name, code="high-bit-depth", reason=why, verdict="converted"))
    elif check.mode not in ("RGB", "L"):
        why = _MODE_NOTES.get(check.mode, f"mode {check.mode}: converted to RGB")
        found.append(Issue(file=name, code=f"mode-{check.mode}", reason=why, verdict="converted"))
    if check.orientation != 1:
        # sd-scripts ignores the tag: its staged copy of the dataset (trainer/sdscripts/staging.py) holds an upright PNG.
        why = (f"EXIF orientation {check.orientation}: turned upright ({check.width}x{check.height}) as a viewer shows it; "
               "the sd-scripts backend is given an upright copy made in the work folder (this file is not changed)")
        found.append(Issue(file=name, code="exif-orientation", reason=why, verdict="converted"))
    if check.frames > 1:
        found.append(Issue(file=name, code="animated", reason=f"animated ({check.frames} frames): only the first is trained", verdict="trained"))
    scale, lost = bucket_fit(check.width, check.height, bucket)
    if scale > UPSCALE_WARNING:
        why = f"{check.width}x{check.height} is upscaled {scale:.1f}x to its {bucket[0]}x{bucket[1]} bucket and may train blurry"
        found.append(Issue(file=name, code="upscaled", reason=why, verdict="trained"))
    if lost > CROP_WARNING:
        why = (f"{check.width}x{check.height} is cropped to its {bucket[0]}x{bucket[1]} bucket, losing {lost:.0%} of the image; "
               "crop or pad it to a less extreme aspect ratio")
        found.append(Issue(file=name, code="cropped", reason=why, verdict="trained"))
    return found


def bucket_fit(width: int, height: int, bucket: Bucket) -> tuple[float, float]:
    """(scale, share cut away) when the image is fitted to `bucket` as the trainer fits it (cover_size):
    resized to cover the bucket, rounded to whole pixels, then centre-cropped to it.
    """
    scale, covered = cover_size(width, height, bucket)
    return scale, 1 - (bucket[0] * bucket[1]) / (covered[0] * covered[1])


def folder_repeats(relpath: PurePosixPath, default: int) -> tuple[int, str | None]:
    """Repeats for an image: the nearest kohya `N_name` folder's N, else `default`; and its folder."""
    folder = relpath.parent
    for part in reversed(folder.parts):
        match = _KOHYA_FOLDER.match(part)
        if match:
            return int(match.group(1)), folder.as_posix()
    return default, (folder.as_posix() if folder.parts else None)


def _check_folder_repeats(images: list[PurePosixPath], default: int) -> None:
    """Refuse a kohya folder asking for more repeats than --repeats allows, before any image is decoded.

    Raises:
        DatasetError: one line naming the folder and the limit.
    """
    for relpath in images:
        times, folder = folder_repeats(relpath, default)
        if times > MAX_REPEATS:
            raise DatasetError(
                f"folder {folder!r} asks for {times} repeats, over the limit of {MAX_REPEATS}; "
                f"rename it to N_name with N from 1 to {MAX_REPEATS}"
            )


def _check_samples(records: list[ImageRecord]) -> None:
    """Refuse an epoch of more than MAX_SAMPLES_PER_EPOCH samples, naming the folder that contributes most.

    Raises:
        DatasetError: one line with the count, the limit and the folder.
    """
    total = sum(r.repeats for r in records)
    if total <= MAX_SAMPLES_PER_EPOCH:
        return
    per_folder = Counter()
    for record in records:
        per_folder[PurePosixPath(record.path).parent.as_posix()] += record.repeats
    folder, most = per_folder.most_common(1)[0]
    folder = "(the top level)" if folder == "." else repr(folder)
    raise DatasetError(
        f"the dataset gives {total} samples per epoch (images x repeats), over the limit of {MAX_SAMPLES_PER_EPOCH}; "
        f"folder {folder} gives {most} of them: lower its repeats (N_name or {setting('repeats')}) or split the dataset",
        field="repeats",
    )


def _folder_notes(folders: dict[str, list[int]], default: int) -> list[Issue]:
    notes = []
    for folder, times in sorted(folders.items()):
        if times[0] == default and not any(_KOHYA_FOLDER.match(p) for p in PurePosixPath(folder).parts):
            code, why = "subfolder", f"{len(times)} images in this subfolder are trained with repeats={default}"
        else:
            code = "kohya-repeats"
            why = (f"{len(times)} images get {times[0]} repeats from the kohya folder name 'N_name' "
                   f"(the folder's N replaces repeats={default})")
        notes.append(Issue(file=folder + "/", code=code, reason=why, verdict="note"))
    return notes


def _shared_stems(records: list[ImageRecord], captions: dict) -> list[Issue]:
    """One note per stem that several trained images share (img0.png + img0.jpg): they share its caption too."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in records:
        path = PurePosixPath(record.path)
        groups[(path.parent.as_posix(), path.stem)].append(record.path)
    notes = []
    for key, names in sorted(groups.items()):
        if len(names) < 2:
            continue
        caption = captions.get(key)
        gets = f"all get the caption {caption.as_posix()} (as kohya does)" if caption else "all train with an empty caption"
        why = f"{' and '.join(names)} share the name {key[1]!r}: {gets}; rename one to give it its own caption"
        notes.append(Issue(file=names[0], code="shared-stem", reason=why, verdict="trained"))
    return notes


def _caption_for(
    root: Path, image: PurePosixPath, captions: dict, read: dict, problems: list[Issue], warnings: list[Issue],
    tokenizers: CaptionTokenizers | None,
) -> str:
    """The caption text for an image, warning (once per caption file) on anything the trainer mishandles.

    Images sharing a stem (img0.png, img0.jpg) share img0.txt, as in kohya: the text is read once into `read`.
    A caption that is not text is a problem (skipped by name); its image trains with an empty caption.
    """
    name = image.as_posix()
    key = (image.parent.as_posix(), image.stem)
    if key in read:
        return read[key]
    path = captions.get(key)
    if path is None:
        why = "no caption file (.txt of the same name): trains with an empty caption"
        warnings.append(Issue(file=name, code="no-caption", reason=why, verdict="trained"))
        return ""
    try:
        text, encoding = read_caption(root / path)
    except CaptionNotRead as exc:
        problems.append(Issue(file=path.as_posix(), code=exc.code, reason=exc.reason, verdict="skipped"))
        why = f"its caption {path.as_posix()} is not read (see the problems): trains with an empty caption"
        warnings.append(Issue(file=name, code="caption-not-read", reason=why, verdict="trained"))
        read[key] = ""
        return ""
    if encoding != "utf-8":
        why = (f"caption is not UTF-8: read as {encoding}, and both backends train the text as read here "
               "(sd-scripts gets a UTF-8 copy); re-save it as UTF-8 if its characters look wrong")
        warnings.append(Issue(file=path.as_posix(), code="caption-encoding", reason=why, verdict="trained"))
    if not text:
        warnings.append(Issue(file=path.as_posix(), code="empty-caption", reason="caption is empty: trains with an empty caption", verdict="trained"))
    elif "\n" in text:
        why = "caption has several lines: all are used here, but the sd-scripts backend reads only the first"
        warnings.append(Issue(file=path.as_posix(), code="multiline-caption", reason=why, verdict="trained"))
    why = _length_warning(text, tokenizers)
    if why:
        warnings.append(Issue(file=path.as_posix(), code="long-caption", reason=why, verdict="trained"))
    read[key] = text
    return text


def _length_warning(text: str, tokenizers: CaptionTokenizers | None) -> str | None:
    """Why a caption will be cut by the text window (counted exactly when the tokenizers are here), else None."""
    if tokenizers is not None:
        qwen, t5, cut = tokenizers.cut(text)
        return cut_reason(qwen, t5, cut, tokenizers.window) if cut else None
    tokens = estimate_tokens(text)
    if tokens <= MAX_CAPTION_TOKENS * ESTIMATE_MARGIN:
        return None
    cut = f"about {tokens - MAX_CAPTION_TOKENS} are cut" if tokens > MAX_CAPTION_TOKENS else "its end may be cut"
    return render(f"caption is about {tokens} tokens (an estimate: no tokenizer here; pass {setting('models_dir')} or download "
                  f"the models for an exact count): the text encoder reads {MAX_CAPTION_TOKENS}, so {cut}; shorten it")


def read_caption(path: Path) -> tuple[str, str]:
    """(stripped text, encoding used): UTF-8, then UTF-16 by its BOM, then cp1252, then latin-1.

    Raises CaptionNotRead for a file over MAX_CAPTION_BYTES (never read whole) or one that is not text.
    """
    with path.open("rb") as f:
        data = f.read(MAX_CAPTION_BYTES + 1)  # the size as read, not as stat'ed: the file may grow meanwhile
    if len(data) > MAX_CAPTION_BYTES:
        size = path.stat().st_size
        shown = f"{size / 1024**2:.1f} MiB" if size >= 1024**2 else f"{size // 1024} KiB"
        raise CaptionNotRead("caption-too-large", f"{shown}, over the {MAX_CAPTION_BYTES // 1024} KiB a caption may have: "
                                                  "not read; a caption is a list of tags or a few sentences")
    text, encoding = _decode_caption(data)
    if _NOT_TEXT.search(text):
        raise CaptionNotRead("not-text", "not a text file (it holds NUL or other control bytes): not read; "
                                         "save the caption as plain UTF-8 text")
    return text, encoding


def _decode_caption(data: bytes) -> tuple[str, str]:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ("utf-16",)
    elif b"\x00" in data:  # UTF-16 saved without a byte-order mark (Windows editors)
        candidates = ("utf-16-le", "utf-16-be")
    else:
        candidates = ("utf-8", "cp1252")
    for encoding in candidates:
        try:
            return data.decode(encoding).lstrip("\ufeff").strip(), encoding
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1").strip(), "latin-1"  # latin-1 decodes any bytes


def estimate_tokens(text: str) -> int:
    """Rough token count: words, digits and punctuation marks, or UTF-8 bytes / 4 when larger (CJK text)."""
    return max(len(_TOKEN_PIECES.findall(text)), math.ceil(len(text.encode()) / 4))


def tag_frequency(captions) -> dict[str, int]:
    """Images per comma-separated tag, most frequent first."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update({tag.strip() for tag in caption.replace("\n", ",").split(",") if tag.strip()})
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
