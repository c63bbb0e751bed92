"""sd-scripts trains only what the validator accepted: its dataset TOML names a staged copy in the work dir.

kohya scans each subset folder itself, so these tests read the staged folders the way sd-scripts 48d368fa
does (train_util.glob_images: the listed extensions, case-sensitive; read_caption: the first line of
`stem.txt`, read as UTF-8) and check that nothing the validator skipped is there, that an EXIF-turned
photo is upright, and that the user's folder is byte-for-byte as it was.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.core.orientation import exif_orientation
from anima_lora_flow.core.dataset_report import DatasetError
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.platforms.detect import PlatformInfo
from anima_lora_flow.core.gpu import GpuInfo
from anima_lora_flow.runner.prepare import backend_files, dataset_report, plan_run
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.trainer.backend import TrainJob
from anima_lora_flow.trainer.sdscripts.backend import SdScriptsBackend
from anima_lora_flow.trainer.sdscripts.staging import stage_dataset

SECRET = "root:x:0:0:secret-password-line"
KOHYA_EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP"]
RED, BLUE = (220, 20, 20), (20, 20, 220)


def _image(path: Path, color, size=(320, 256)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _sideways_jpeg(path: Path) -> Path:
    """480x320 stored, red left and blue right, tagged Orientation=6: shown upright it is 320x480, red on top."""
    pixels = np.zeros((320, 480, 3), dtype=np.uint8)
    pixels[:, :240], pixels[:, 240:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A dataset with what kohya must not see: links out of it, a dangling link, a duplicate, a too-small image."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text(SECRET)
    _image(outside / "stolen.png", (1, 2, 3))
    ds = tmp_path / "ds"
    _image(ds / "a.png", (10, 200, 30)), (ds / "a.txt").write_text("1girl, smile")
    _image(ds / "g0.png", (40, 40, 40))
    os.symlink(outside / "passwd", ds / "g0.txt")  # the image trains; this caption is never read
    os.symlink(outside / "stolen.png", ds / "stolen.png")
    (ds / "stolen.txt").write_text("stolen")
    os.symlink(ds / "deleted.png", ds / "gone.png")
    _image(ds / "dup.png", (10, 200, 30)), (ds / "dup.txt").write_text("dup")  # same bytes as a.png
    _image(ds / "tiny.png", (9, 9, 9), size=(8, 8))
    _sideways_jpeg(ds / "phone.jpg"), (ds / "phone.txt").write_text("1girl, standing")
    _image(ds / "10_char" / "b.PNG", (90, 20, 200)), (ds / "10_char" / "b.txt").write_text("char, blue hair\nsecond line")
    (ds / "10_char" / "notes.md").write_text("not a caption")
    return ds


def _tree_hash(root: Path) -> str:
    """Names, link targets and bytes of everything under `root`, links not followed."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(folder) / name
            digest.update(str(path.relative_to(root)).encode())
            if path.is_symlink():
                digest.update(b"->" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _kohya_view(dataset_toml: dict) -> dict[tuple[str, str], tuple[int, str | None]]:
    """(subset folder name, image name) -> (repeats, caption) as sd-scripts' DreamBooth loader reads them."""
    seen = {}
    for subset in dataset_toml["datasets"][0]["subsets"]:
        folder = subset["image_dir"]
        paths = {p for ext in KOHYA_EXTENSIONS for p in glob.glob(os.path.join(glob.escape(folder), "*" + ext))}
        for path in sorted(paths):
            caption_file = os.path.splitext(path)[0] + subset["caption_extension"]
            caption = None
            if os.path.isfile(caption_file):
                with open(caption_file, encoding="utf-8") as f:
                    lines = f.readlines()
                assert lines, f"sd-scripts asserts on an empty caption file: {caption_file}"
                caption = lines[0].strip()
            seen[(os.path.basename(folder), os.path.basename(path))] = (subset["num_repeats"], caption)
    return seen


def _config(dataset: Path, tmp_path: Path, **overrides) -> TrainingConfig:
    settings = dict(project_name="my_lora", dataset=str(dataset), trainer="sd-scripts", storage=str(tmp_path / "runs"),
                    work_dir=str(tmp_path / "work"), resolution=512)
    return TrainingConfig(**{**settings, **overrides})


def _top(staged) -> Path:
    """The staged folder of the dataset's top-level images (the first subset)."""
    return Path(staged.subsets[0][0])


def _plan(config: TrainingConfig, report):
    platform = PlatformInfo(kind="local", gpu=GpuInfo(name="NVIDIA L4", memory_gib=22.0, capability=(8, 9)))
    return plan_run(config, report, platform=platform)


def test_the_dataset_toml_names_only_validated_images_and_captions(dataset: Path, tmp_path: Path):
    before = _tree_hash(dataset)
    config = _config(dataset, tmp_path)
    report = dataset_report(config)
    assert {p.file: p.code for p in report.problems} == {
        "g0.txt": "link-outside", "stolen.png": "link-outside", "gone.png": "broken-link", "dup.png": "duplicate", "tiny.png": "too-small",
    }
    store = RunStore(resolve_location(config.storage), config.project_name)
    key, result = backend_files(config, report, _plan(config, report), "r1", store)
    assert key == "sd_scripts"
    dataset_toml = tomllib.loads(Path(result["dataset_toml"]).read_text())

    stage = Path(config.work_dir) / "sd-scripts" / "datasets"
    dirs = [Path(s["image_dir"]) for s in dataset_toml["datasets"][0]["subsets"]]
    assert all(d.resolve().is_relative_to(stage.resolve()) and not d.resolve().is_relative_to(dataset.resolve()) for d in dirs)
    assert _kohya_view(dataset_toml) == {
        ("ds", "a.png"): (5, "1girl, smile"),
        ("ds", "g0.png"): (5, ""),  # the validator's empty caption, not the linked password file
        ("ds", "phone.png"): (5, "1girl, standing"),
        ("10_char", "b.png"): (10, "char, blue hair"),  # kohya's N_name repeats kept; .PNG lowercased so kohya finds it
    }
    staged_text = b"".join(p.read_bytes() for d in dirs for p in d.iterdir() if p.suffix == ".txt")
    assert SECRET.encode() not in staged_text and b"stolen" not in staged_text and b"dup" not in staged_text
    assert {p.name for p in dirs[0].iterdir()} == {"a.png", "a.txt", "g0.png", "g0.txt", "phone.png", "phone.txt"}
    assert os.path.samefile(dirs[0] / "a.png", dataset / "a.png")  # a link to the user's file, no copy of its bytes
    assert _tree_hash(dataset) == before


def test_an_exif_turned_photo_is_staged_upright(dataset: Path, tmp_path: Path):
    config = _config(dataset, tmp_path)
    report = dataset_report(config)
    staged = stage_dataset(report, config.resolved_work_dir())
    phone = [i for i in report.images if i.path == "phone.jpg"][0]
    with Image.open(_top(staged) / "phone.png") as img:
        assert exif_orientation(img) == 1 and img.size == (320, 480) == (phone.width, phone.height)
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert pixels[:120].mean(axis=(0, 1))[0] > 180 and pixels[:120].mean(axis=(0, 1))[2] < 60  # red on top
    assert pixels[-120:].mean(axis=(0, 1))[2] > 180 and pixels[-120:].mean(axis=(0, 1))[0] < 60  # blue at the bottom
    note = [w for w in report.warnings if w.code == "exif-orientation"][0]
    assert "the sd-scripts backend is given an upright copy" in note.reason and "as stored" not in note.reason


def test_the_training_job_gets_the_staged_folders(dataset: Path, tmp_path: Path):
    config = _config(dataset, tmp_path)
    report = dataset_report(config)
    job = TrainJob(config=config.model_dump(mode="json"), items=[], models_dir=None, work_dir=str(config.resolved_work_dir()),
                   output_dir=str(tmp_path / "out"), dit="/m/dit", text_encoder="/m/te", vae="/m/vae")
    job = SdScriptsBackend().prepare(job, report)
    staged = stage_dataset(report, config.resolved_work_dir())
    assert job.dataset_dir == str(staged.root)
    assert job.subsets == [(str(staged.root / "0" / "ds"), 5), (str(staged.root / "1" / "10_char"), 10)]


def test_restaging_an_unchanged_dataset_reuses_the_stage(dataset: Path, tmp_path: Path):
    config = _config(dataset, tmp_path)
    first = stage_dataset(dataset_report(config), config.resolved_work_dir())
    upright = (_top(first) / "phone.png").stat().st_mtime_ns
    again = stage_dataset(dataset_report(config), config.resolved_work_dir())
    assert again.reused and again == first.__class__(first.root, first.subsets, reused=True)
    assert (_top(again) / "phone.png").stat().st_mtime_ns == upright  # nothing written again

    (dataset / "a.txt").write_text("1girl, smile, hat")  # a changed dataset: a new stage, the old one removed
    changed = stage_dataset(dataset_report(config), config.resolved_work_dir())
    assert not changed.reused and changed.root != first.root and not first.root.exists()
    assert (_top(changed) / "a.txt").read_text() == "1girl, smile, hat\n"


def test_a_stage_missing_a_file_is_made_again(dataset: Path, tmp_path: Path):
    config = _config(dataset, tmp_path)
    first = stage_dataset(dataset_report(config), config.resolved_work_dir())
    (_top(first) / "a.png").unlink()
    again = stage_dataset(dataset_report(config), config.resolved_work_dir())
    assert not again.reused and (_top(again) / "a.png").exists()


def test_a_link_swapped_in_after_validation_is_refused(dataset: Path, tmp_path: Path):
    config = _config(dataset, tmp_path)
    report = dataset_report(config)
    (dataset / "a.png").unlink()
    os.symlink(tmp_path / "outside" / "stolen.png", dataset / "a.png")
    with pytest.raises(DatasetError, match="a.png changed since the dataset was validated"):
        stage_dataset(report, config.resolved_work_dir())
    assert not [p for p in (Path(config.work_dir) / "sd-scripts" / "datasets").iterdir()]  # no half stage left


def test_a_work_dir_inside_the_dataset_is_refused(dataset: Path, tmp_path: Path):
    before = _tree_hash(dataset)
    config = _config(dataset, tmp_path, work_dir=str(dataset / "work"))
    with pytest.raises(UserInputError, match="is inside the dataset folder"):
        stage_dataset(dataset_report(config), config.resolved_work_dir())
    assert _tree_hash(dataset) == before


def test_names_that_would_share_a_caption_are_kept_apart(tmp_path: Path):
    ds = tmp_path / "ds"
    _image(ds / "p.png", (1, 100, 1)), (ds / "p.txt").write_text("plain")
    _sideways_jpeg(ds / "p.jpg")  # shares p.txt (as in kohya) but is staged as a PNG: it needs another name
    _image(ds / "q.png", (2, 100, 2)), _image(ds / "q.webp", (3, 100, 3)), (ds / "q.txt").write_text("shared")
    _image(ds / "x.PNG", (4, 100, 4)), (ds / "x.txt").write_text("ex")
    _image(ds / "x.png" / "in.png", (5, 100, 5))  # kohya's *.png matches a folder too: it must not sit among images
    config = _config(ds, tmp_path)
    report = dataset_report(config)
    staged = stage_dataset(report, config.resolved_work_dir())
    view = _kohya_view({"datasets": [{"subsets": [{"image_dir": d, "num_repeats": r, "caption_extension": ".txt"}
                                                  for d, r in staged.subsets]}]})
    assert view == {("ds", "p.png"): (5, "plain"), ("ds", "p~2.png"): (5, "plain"),
                    ("ds", "q.png"): (5, "shared"), ("ds", "q.webp"): (5, "shared"),
                    ("ds", "x.png"): (5, "ex"), ("x.png", "in.png"): (5, "")}


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second filesystem (/dev/shm)")
def test_across_filesystems_an_image_is_linked_by_its_real_path(tmp_path: Path):
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        if os.stat(other).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem here")
        ds = Path(other) / "ds"
        _image(ds / "a.png", (5, 5, 5)), (ds / "a.txt").write_text("x")
        config = _config(ds, tmp_path)
        staged = stage_dataset(dataset_report(config), config.resolved_work_dir())
        link = _top(staged) / "a.png"
        assert link.is_symlink() and os.readlink(link) == str((ds / "a.png").resolve())
