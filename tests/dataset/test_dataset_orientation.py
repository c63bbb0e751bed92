"""A phone photo stored sideways with EXIF Orientation=6 is bucketed and trained upright, by one shared rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima_lora_flow.core.orientation import exif_orientation, upright, upright_size
from anima_lora_flow.dataset.validate import validate_folder
from anima_lora_flow.trainer.cache import load_image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def write_sideways_jpeg(path: Path, orientation: int = 6) -> Path:
    """A 480x320 JPEG, red left half and blue right half, tagged to be turned a quarter clockwise when shown.

    Shown upright it is 320x480: red on top, blue at the bottom.
    """
    pixels = np.zeros((320, 480, 3), dtype=np.uint8)
    pixels[:, :240], pixels[:, 240:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def test_the_file_really_carries_the_tag(tmp_path: Path):
    with Image.open(write_sideways_jpeg(tmp_path / "p.jpg")) as img:
        assert img.size == (480, 320) and exif_orientation(img) == 6 and upright_size(img) == (320, 480)
        assert upright(img).size == (320, 480)


def test_validator_buckets_it_as_portrait_and_says_so(tmp_path: Path):
    write_sideways_jpeg(tmp_path / "ds" / "phone.jpg")
    report = validate_folder(tmp_path / "ds", resolution=512)
    [image] = report.images
    assert (image.width, image.height) == (320, 480)
    assert image.bucket[0] < image.bucket[1]  # portrait, not the stored landscape
    [note] = [w for w in report.warnings if w.code == "exif-orientation"]
    assert note.verdict == "converted" and "EXIF orientation 6: turned upright (320x480)" in note.reason
    assert "the sd-scripts backend is given an upright copy made in the work folder" in note.reason


def test_trainer_loads_it_upright_in_the_validators_bucket(tmp_path: Path):
    path = write_sideways_jpeg(tmp_path / "ds" / "phone.jpg")
    bucket = tuple(validate_folder(tmp_path / "ds", resolution=512).images[0].bucket)
    pixels = ((load_image(path, bucket) + 1) * 127.5).numpy()  # (3, H, W)
    assert pixels.shape == (3, bucket[1], bucket[0])
    top, bottom = pixels[:, : bucket[1] // 4].mean(axis=(1, 2)), pixels[:, -bucket[1] // 4 :].mean(axis=(1, 2))
    assert top[0] > 180 and top[2] < 60  # red on top
    assert bottom[2] > 180 and bottom[0] < 60  # blue at the bottom


@pytest.mark.parametrize("orientation", [1, 3])
def test_no_quarter_turn_keeps_the_stored_shape(tmp_path: Path, orientation: int):
    write_sideways_jpeg(tmp_path / "ds" / "p.jpg", orientation)
    report = validate_folder(tmp_path / "ds", resolution=512)
    assert (report.images[0].width, report.images[0].height) == (480, 320)
    assert [w.code for w in report.warnings if w.code == "exif-orientation"] == ([] if orientation == 1 else ["exif-orientation"])
