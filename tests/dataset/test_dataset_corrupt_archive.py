"""A corrupt archive is named as such, not as 'not an archive'."""

import pytest

from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.dataset.report import DatasetError


def test_corrupt_zip_says_so(tmp_path):
    bad = tmp_path / "my_dataset.zip"
    bad.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DatasetError, match="not a readable archive"):
        prepare_dataset(str(bad), tmp_path / "work")
