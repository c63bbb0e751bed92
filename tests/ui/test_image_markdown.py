"""Images in artifacts are embedded PNGs the Prefect UI shows, small enough for an API request."""

import base64
import io
import re

from PIL import Image

from anima_lora_flow.ui.artifacts import image_markdown


def _png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_markdown_embeds_a_png_shrunk_to_max_side(tmp_path):
    path = tmp_path / "grid.png"
    path.write_bytes(_png((3000, 1000)))
    markdown = image_markdown(path, "samples [step 10]", max_side=600)
    match = re.fullmatch(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    assert match.group(1) == "samples (step 10)"
    with Image.open(io.BytesIO(base64.b64decode(match.group(2)))) as image:
        assert image.format == "PNG" and image.size == (600, 200)


def test_a_small_image_keeps_its_size():
    markdown = image_markdown(_png((40, 30)), "chart")
    data = base64.b64decode(markdown.split("base64,", 1)[1].rstrip(")"))
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (40, 30)


def test_a_photo_is_embedded_as_a_smaller_jpeg():
    import numpy as np

    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 800, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    as_png, as_jpeg = image_markdown(buffer.getvalue(), "grid"), image_markdown(buffer.getvalue(), "grid", photo=True)
    assert "data:image/jpeg;base64," in as_jpeg and len(as_jpeg) < len(as_png) / 2
    data = base64.b64decode(as_jpeg.split("base64,", 1)[1].rstrip(")"))
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (800, 400)
