"""Each bad case is built here from real files, and its exact verdict asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.core.dataset_report import DatasetError
from anima_lora_flow.dataset.validate import (
    MAX_CAPTION_TOKENS,
    bucket_fit,
    estimate_tokens,
    folder_repeats,
    read_caption,
    tag_frequency,
    validate_folder,
)

from dataset_builders import png_claiming_size, write_caption, write_image


def _verdicts(issues) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for issue in issues:
        found.setdefault(issue.file, []).append((issue.verdict, issue.reason))
    return found


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """One folder holding every case the issue lists."""
    root = tmp_path / "messy"
    write_image(root / "good.png"), write_caption(root / "good.txt", "1girl, solo, smile")
    write_image(root / "upper.JPG", fmt="JPEG"), write_caption(root / "upper.txt", "1girl, red hair")
    write_image(root / "anim.GIF", fmt="GIF"), write_caption(root / "anim.txt")
    write_image(root / "nocap.png")
    write_caption(root / "orphan.txt", "no image for me")
    write_image(root / "utf16.png"), write_caption(root / "utf16.txt", "café, 1girl", encoding="utf-16")
    write_image(root / "empty.png"), write_caption(root / "empty.txt", "  \n")
    truncated = write_image(root / "trunc.png", size=(400, 300))
    truncated.write_bytes(truncated.read_bytes()[:200])
    write_caption(root / "trunc.txt")
    write_image(root / "cmyk.jpg", mode="CMYK"), write_caption(root / "cmyk.txt")
    write_image(root / "deep.png", mode="I;16"), write_caption(root / "deep.txt")
    write_image(root / "alpha.png", mode="RGBA"), write_caption(root / "alpha.txt")
    write_image(root / "pal.png", mode="P"), write_caption(root / "pal.txt")
    write_image(root / "tiny.png", size=(1, 1)), write_caption(root / "tiny.txt")
    (root / "z_dup.png").write_bytes((root / "good.png").read_bytes()), write_caption(root / "z_dup.txt")
    (root / "bomb.png").write_bytes(png_claiming_size(50_000, 50_000))
    (root / "noise.png").write_bytes(b"not an image at all")
    write_image(root / "long.png"), write_caption(root / "long.txt", ", ".join(f"tag{i}" for i in 600 * [0]))
    write_image(root / "__MACOSX" / "._good.png"), (root / ".DS_Store").write_bytes(b"\0\1"), (root / "Thumbs.db").write_bytes(b"x")
    write_image(root / "10_char" / "a.png"), write_caption(root / "10_char" / "a.txt", "char, 1girl")
    write_image(root / "extra" / "b.png"), write_caption(root / "extra" / "b.txt", "1girl")
    (root / "meta.json").write_text("{}")
    return root


def test_every_case_gets_its_exact_verdict(messy: Path):
    report = validate_folder(messy, resolution=512, repeats=5)
    trained = {i.path: i for i in report.images}
    assert sorted(trained) == sorted([
        "good.png", "upper.JPG", "nocap.png", "utf16.png", "empty.png", "cmyk.jpg", "deep.png",
        "alpha.png", "pal.png", "long.png", "10_char/a.png", "extra/b.png",
    ])
    problems = _verdicts(report.problems)
    assert {i.file: (i.verdict, i.code) for i in report.problems} == {
        "anim.GIF": ("skipped", "unsupported-format"),
        "bomb.png": ("skipped", "too-large"),
        "noise.png": ("skipped", "unreadable"),
        "tiny.png": ("skipped", "too-small"),
        "trunc.png": ("skipped", "truncated"),
        "z_dup.png": ("skipped", "duplicate"),
    }
    assert "not loaded by the trainer" in problems["anim.GIF"][0][1]
    assert "decompression bomb" in problems["bomb.png"][0][1]
    assert problems["z_dup.png"][0][1].startswith("same content as good.png")
    assert "truncated" in problems["trunc.png"][0][1]
    assert "too small" in problems["tiny.png"][0][1]
    codes = {(i.file, i.code) for i in report.warnings if i.code != "upscaled"}
    assert codes == {
        ("nocap.png", "no-caption"), ("orphan.txt", "orphan-caption"), ("utf16.txt", "caption-encoding"),
        ("empty.txt", "empty-caption"), ("cmyk.jpg", "mode-CMYK"), ("deep.png", "high-bit-depth"),
        ("alpha.png", "mode-RGBA"), ("pal.png", "mode-P"), ("long.txt", "long-caption"), ("meta.json", "ignored-file"),
        ("10_char/", "kohya-repeats"), ("extra/", "subfolder"),
    }

    warnings = _verdicts(report.warnings)
    assert warnings["nocap.png"] == [("trained", "no caption file (.txt of the same name): trains with an empty caption")]
    assert warnings["orphan.txt"][0][0] == "ignored"
    assert "anim.txt" not in warnings and "trunc.txt" not in warnings  # their image's problem says it all
    assert warnings["utf16.txt"][0] == ("trained", "caption is not UTF-8: read as utf-16, and both backends train the text as read here "
                                              "(sd-scripts gets a UTF-8 copy); re-save it as UTF-8 if its characters look wrong")
    assert trained["utf16.png"].caption == "café, 1girl"
    assert warnings["empty.txt"] == [("trained", "caption is empty: trains with an empty caption")]
    assert trained["empty.png"].caption == ""
    assert warnings["cmyk.jpg"][0][0] == "converted" and "CMYK" in warnings["cmyk.jpg"][0][1]
    assert warnings["deep.png"][0][0] == "converted" and "high-bit-depth" in warnings["deep.png"][0][1]
    assert "flattened on white" in warnings["alpha.png"][0][1]
    assert warnings["pal.png"][0] == ("converted", "palette image: converted to RGB")
    assert "an estimate" in warnings["long.txt"][0][1]
    assert warnings["meta.json"][0][0] == "ignored"
    assert warnings["10_char/"][0][0] == "note" and "10 repeats" in warnings["10_char/"][0][1]
    assert warnings["extra/"] == [("note", "1 images in this subfolder are trained with repeats=5")]
    # Junk never appears anywhere; clean images get no warning.
    every = set(trained) | set(problems) | set(warnings)
    assert not [f for f in every if "MACOSX" in f or f in (".DS_Store", "Thumbs.db")]
    assert "good.png" not in warnings and "upper.JPG" not in warnings

    assert trained["10_char/a.png"].repeats == 10 and trained["good.png"].repeats == 5
    assert report.trainable_count == 12
    assert report.samples_per_epoch == 11 * 5 + 10
    assert report.tag_frequency["1girl"] == 9
    assert sum(report.bucket_histogram.values()) == 12


def test_buckets_and_train_items(tmp_path: Path):
    write_image(tmp_path / "wide.png", size=(1200, 600)), write_caption(tmp_path / "wide.txt")
    write_image(tmp_path / "square.png", size=(700, 700)), write_caption(tmp_path / "square.txt")
    report = validate_folder(tmp_path, resolution=768, repeats=3)
    buckets = {i.path: tuple(i.bucket) for i in report.images}
    assert buckets["square.png"] == (768, 768)
    assert buckets["wide.png"][0] > buckets["wide.png"][1]
    items = report.train_items()
    assert all(item.image_path.is_absolute() and item.image_path.is_file() for item in items)
    assert report.samples_per_bucket() == {(768, 768): 3, buckets["wide.png"]: 3}


def test_small_image_warns_about_upscaling(tmp_path: Path):
    write_image(tmp_path / "small.png", size=(100, 100)), write_caption(tmp_path / "small.txt")
    report = validate_folder(tmp_path, resolution=768)
    assert report.trainable_count == 1
    assert "upscaled 7.7x" in report.warnings[0].reason


def test_extreme_aspect_ratio_warns_how_much_the_bucket_crop_cuts(tmp_path: Path):
    """64x4000 at 768 px lands in the narrowest bucket, 256x2304: the centre crop keeps 14% of it."""
    write_image(tmp_path / "a.png", size=(64, 4000)), write_caption(tmp_path / "a.txt")
    report = validate_folder(tmp_path, resolution=768)
    assert tuple(report.images[0].bucket) == (256, 2304)
    [cropped] = [w for w in report.warnings if w.code == "cropped"]
    assert cropped.verdict == "trained" and cropped.reason == (
        "64x4000 is cropped to its 256x2304 bucket, losing 86% of the image; crop or pad it to a less extreme aspect ratio"
    )
    at_256 = validate_folder(tmp_path, resolution=256)  # one square bucket only: almost all of it is cut
    assert "64x4000 is cropped to its 256x256 bucket, losing 98% of the image" in at_256.to_text()


def test_crop_share_follows_the_trainers_resize_and_centre_crop():
    assert bucket_fit(1024, 1024, (768, 768)) == (0.75, 0.0)
    scale, lost = bucket_fit(1200, 600, (1024, 576))  # 2:1 in a 16:9 bucket: the sides are cut
    assert scale == 0.96 and lost == pytest.approx(1 - (1024 * 576) / (1152 * 576))


def test_common_shapes_do_not_warn_about_cropping(tmp_path: Path):
    for name, size in {"wide.png": (1920, 1080), "tall.png": (600, 1400), "square.png": (900, 900), "long.png": (512, 1800)}.items():
        write_image(tmp_path / name, size=size), write_caption(tmp_path / name.replace(".png", ".txt"))
    report = validate_folder(tmp_path, resolution=768)
    assert [w for w in report.warnings if w.code == "cropped"] == []


def test_many_cropped_images_are_one_group_in_the_report(tmp_path: Path):
    for i in range(4):
        write_image(tmp_path / f"strip{i}.png", size=(64 + i, 4000)), write_caption(tmp_path / f"strip{i}.txt")
    text = validate_folder(tmp_path, resolution=768).to_text()
    assert "[trained] 4 files, e.g. strip0.png: 64x4000 is cropped to its 256x2304 bucket, losing 86% of the image" in text
    assert "      strip0.png, strip1.png, strip2.png, strip3.png" in text


def test_fingerprint_follows_content_not_location(tmp_path: Path):
    for name in ("a", "b"):
        folder = tmp_path / name
        write_image(folder / "x.png"), write_caption(folder / "x.txt", "same")
    first, second = validate_folder(tmp_path / "a"), validate_folder(tmp_path / "b")
    assert first.fingerprint == second.fingerprint
    write_caption(tmp_path / "b" / "x.txt", "changed")
    assert validate_folder(tmp_path / "b").fingerprint != first.fingerprint
    assert validate_folder(tmp_path / "a", repeats=2).fingerprint != first.fingerprint


def test_no_trainable_image_is_an_error_with_the_report(tmp_path: Path):
    write_image(tmp_path / "only.gif", fmt="GIF")
    with pytest.raises(DatasetError, match=r"no trainable image .* only.gif") as caught:
        prepare_dataset(str(tmp_path), tmp_path / "work")
    assert caught.value.report.problems[0].file == "only.gif"
    (tmp_path / "only.gif").unlink()
    with pytest.raises(DatasetError, match="no images found"):
        prepare_dataset(str(tmp_path), tmp_path / "work2")


def test_local_folder_is_read_in_place_and_never_modified(messy: Path, tmp_path: Path):
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in messy.rglob("*")}
    work = tmp_path / "work"
    report = prepare_dataset(str(messy), work)
    assert report.root == str(messy.absolute())
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in messy.rglob("*")} == before
    assert not work.exists() or not any(work.rglob("*"))


@pytest.mark.parametrize(
    ("data", "text", "encoding"),
    [
        ("tag, ünï".encode(), "tag, ünï", "utf-8"),
        ("\ufefftag".encode(), "tag", "utf-8"),
        ("tag, ünï".encode("utf-16"), "tag, ünï", "utf-16"),
        ("tag".encode("utf-16-le"), "tag", "utf-16-le"),
        ("café".encode("cp1252"), "café", "cp1252"),
        (b"\x81\x8d", "\x81\x8d", "latin-1"),
    ],
)
def test_read_caption_fallbacks(tmp_path: Path, data: bytes, text: str, encoding: str):
    (tmp_path / "c.txt").write_bytes(data)
    assert read_caption(tmp_path / "c.txt") == (text, encoding)


def test_token_estimate_and_tags():
    assert estimate_tokens("1girl, solo") == 4
    assert estimate_tokens("漢" * 100) == 75  # no spaces: bytes / 4
    assert estimate_tokens(", ".join(["long blonde hair"] * 200)) > MAX_CAPTION_TOKENS
    assert tag_frequency(["a, b", "b,  c ", "b\nd"]) == {"b": 3, "a": 1, "c": 1, "d": 1}


def test_folder_repeats_rule():
    from pathlib import PurePosixPath as P

    assert folder_repeats(P("x.png"), 5) == (5, None)
    assert folder_repeats(P("3_char/x.png"), 5) == (3, "3_char")
    assert folder_repeats(P("3_char/sub/x.png"), 5) == (3, "3_char/sub")
    assert folder_repeats(P("misc/x.png"), 5) == (5, "misc")


def test_text_report_groups_like_findings_and_markdown_lists_them(messy: Path):
    report = validate_folder(messy, resolution=768)
    text = report.to_text()
    assert text.splitlines()[1].strip() == "12 images will be trained (with per-folder repeats = 65 samples per epoch); 6 skipped, 24 warnings"
    assert "[trained] 12 files, e.g. alpha.png: 320x256 is upscaled" in text
    assert "[skipped] tiny.png: 1x1 is too small (a side under 64 px); use a larger image" in text
    markdown = report.to_markdown()
    assert "| `z_dup.png` | skipped | same content as good.png: trained once, not twice |" in markdown
    assert "## Buckets at 768px" in markdown


def test_images_sharing_a_stem_share_its_caption_with_a_warning(tmp_path: Path):
    """img0.png + img0.jpg + img0.txt: one image was reported 'no caption file' although img0.txt exists."""
    write_image(tmp_path / "img0.png", size=(320, 256)), write_image(tmp_path / "img0.jpg", size=(256, 320))
    write_caption(tmp_path / "img0.txt", "1girl, smile")
    write_image(tmp_path / "img1.png"), write_caption(tmp_path / "img1.txt", "solo")
    report = validate_folder(tmp_path)
    assert {i.path: i.caption for i in report.images} == {"img0.jpg": "1girl, smile", "img0.png": "1girl, smile", "img1.png": "solo"}
    assert [w for w in report.warnings if w.code == "no-caption"] == [] and not any(w.code == "orphan-caption" for w in report.warnings)
    shared = [w for w in report.warnings if w.code == "shared-stem"]
    assert [(w.file, w.verdict, w.reason) for w in shared] == [(
        "img0.jpg", "trained",
        "img0.jpg and img0.png share the name 'img0': all get the caption img0.txt (as kohya does); rename one to give it its own caption",
    )]
    text = report.to_text()
    assert "no caption file" not in text and "share the name 'img0'" in text


def test_caption_warnings_are_given_once_for_a_shared_caption(tmp_path: Path):
    write_image(tmp_path / "a.png"), write_image(tmp_path / "a.webp", fmt="WEBP")
    write_caption(tmp_path / "a.txt", "")
    report = validate_folder(tmp_path)
    assert [w.file for w in report.warnings if w.code == "empty-caption"] == ["a.txt"]
    assert [w.code for w in report.warnings if w.file.startswith("a.")].count("shared-stem") == 1


def test_high_bit_depth_warning_tells_the_truth(tmp_path: Path):
    write_image(tmp_path / "deep.png", mode="I;16"), write_caption(tmp_path / "deep.txt")
    (warning,) = [w for w in validate_folder(tmp_path).warnings if w.code == "high-bit-depth"]
    assert "scaled down to 8-bit RGB" in warning.reason and "clip" not in warning.reason
