import hashlib

import fsspec

from anima_lora_flow.core.hashing import sha256_file


def test_local_and_fsspec_files_hash_to_hashlibs_digest(tmp_path):
    data = bytes(range(256)) * 40_000  # several read chunks
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    fs = fsspec.filesystem("memory")
    fs.pipe("/hashing-test/blob.bin", data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(local) == expected
    assert sha256_file(str(local)) == expected
    assert sha256_file("/hashing-test/blob.bin", fs) == expected
    fs.rm("/hashing-test", recursive=True)
