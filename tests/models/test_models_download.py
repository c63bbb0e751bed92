"""ensure_models against a local fake Hub: real huggingface_hub download code, no internet."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections import namedtuple

import pytest
from fake_anima import DIT_BASE, single_file_repo

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.core import known_models
from anima_lora_flow.models.download import ModelInputError, ModelNetworkError, ensure_models, ready_models

TE = known_models.TEXT_ENCODER.filename


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_gets(hub) -> list:
    return [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]


class TestNative:
    def test_downloads_only_needed_subfolders(self, fake_hub, tmp_path):
        paths = ensure_models("anima-base-v1.0", backend="native", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        root = paths.diffusers_dir
        for sub in known_models.DIFFUSERS_SUBFOLDERS:
            assert (root / sub / "config.json").is_file()
        assert (root / "model_index.json").is_file()
        assert not (root / "README.md").exists()
        assert paths.dit is None and paths.text_encoder is None

    def test_second_run_makes_no_request(self, fake_hub, tmp_path):
        first = ensure_models("anima-base-v1.0", backend="native", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        seen = len(fake_hub.requests)
        second = ensure_models("anima-base-v1.0", backend="native", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert second == first
        assert len(fake_hub.requests) == seen
        assert ready_models("anima-base-v1.0", "native", tmp_path / "m") == first


class TestSdScripts:
    def test_single_files_verified(self, fake_hub, tmp_path):
        paths = ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        repo = single_file_repo()
        assert paths.dit.read_bytes() == repo.files[DIT_BASE]
        assert sha(paths.text_encoder) == known_models.TEXT_ENCODER.sha256
        assert paths.vae.name == "qwen_image_vae.safetensors"
        assert paths.diffusers_dir is None


class TestFaults:
    def test_interrupted_download_resumes_with_range(self, fake_hub, tmp_path, monkeypatch):
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)  # resume granularity is one chunk (10 MB by default)
        fake_hub.faults.truncate[TE] = [1024]
        paths = ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        ranges = [r[2] for r in fake_hub.gets(TE)]
        assert ranges == [None, "bytes=1024-"]
        assert sha(paths.text_encoder) == known_models.TEXT_ENCODER.sha256

    def test_corrupt_download_is_deleted_and_fetched_again(self, fake_hub, tmp_path, caplog):
        fake_hub.faults.corrupt[TE] = 1
        with caplog.at_level(logging.WARNING, logger="anima_lora_flow.models"):
            paths = ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert len(fake_hub.gets(TE)) == 2
        assert sha(paths.text_encoder) == known_models.TEXT_ENCODER.sha256
        assert "damaged" in caplog.text

    def test_corrupt_twice_is_a_clear_error(self, fake_hub, tmp_path):
        fake_hub.faults.corrupt[TE] = 2
        with pytest.raises(ModelInputError, match="damaged after two downloads"):
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)

    def test_damaged_cache_is_detected_on_the_next_run(self, fake_hub, tmp_path):
        paths = ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        blob = paths.vae.resolve()
        blob.write_bytes(b"\0" * blob.stat().st_size)  # same size, wrong content: only the hash notices
        again = ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert sha(again.vae) == known_models.VAE.sha256
        assert len(fake_hub.gets(known_models.VAE.filename)) == 2

    def test_file_missing_from_repo_names_the_fix(self, fake_hub, tmp_path):
        del fake_hub.repos[known_models.SINGLE_FILE_REPO].files["split_files/diffusion_models/anima-preview.safetensors"]
        with pytest.raises(ModelInputError, match="not in circlestone-labs/Anima.*--base-model"):
            ensure_models("anima-preview", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)

    def test_404_on_download_is_a_clear_error(self, fake_hub, tmp_path):
        fake_hub.faults.status[TE] = [404]
        with pytest.raises(ModelInputError, match=r"HTTP 404.*--base-model") as info:
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert isinstance(info.value, UserInputError)

    def test_missing_repo_is_a_clear_error(self, fake_hub, tmp_path):
        del fake_hub.repos[known_models.DIFFUSERS_REPO]
        with pytest.raises(ModelInputError, match="was not found.*HF_TOKEN"):
            ensure_models("anima-base-v1.0", backend="native", cache_dir=tmp_path / "m", endpoint=fake_hub.url)

    def test_gated_repo_needs_token_and_token_is_never_logged(self, fake_hub, tmp_path, monkeypatch, caplog):
        fake_hub.repos[known_models.SINGLE_FILE_REPO].gated = True
        with pytest.raises(ModelInputError, match="gated.*HF_TOKEN"):
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        monkeypatch.setenv("HF_TOKEN", fake_hub.token)
        with caplog.at_level(logging.DEBUG):
            paths = ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert paths.vae.is_file()
        assert fake_hub.token not in caplog.text

    def test_hub_errors_are_retried_then_succeed(self, fake_hub, tmp_path):
        fake_hub.faults.status[TE] = [503, 503]
        paths = ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert sha(paths.text_encoder) == known_models.TEXT_ENCODER.sha256

    def test_lasting_hub_outage_is_a_retryable_oserror(self, fake_hub, tmp_path):
        fake_hub.faults.status[TE] = [503] * 40
        with pytest.raises(ModelNetworkError, match="HTTP 503") as info:
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert isinstance(info.value, OSError) and not isinstance(info.value, UserInputError)

    def test_a_download_is_retried_by_huggingface_hub_alone(self, fake_hub, tmp_path):
        """One retry layer: huggingface_hub's backoff, not a loop of ours around it nor Prefect's task retries after it."""
        from prefect.states import Failed

        from anima_lora_flow.tasks.retry import retry_unless_user_error

        fake_hub.faults.status[TE] = [503] * 40
        with pytest.raises(ModelNetworkError) as info:
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        tries = [r for r in fake_hub.requests if r[1].endswith("/" + TE)]
        assert 2 <= len(tries) <= 7  # huggingface_hub: one quick try, then up to six with backoff
        assert retry_unless_user_error(None, None, Failed(data=info.value)) is False

    def test_a_5xx_on_the_body_which_huggingface_hub_does_not_retry_is_left_to_the_task(self, fake_hub, tmp_path):
        from prefect.states import Failed

        from anima_lora_flow.tasks.retry import retry_unless_user_error

        fake_hub.faults.status[TE] = [None, 503]  # the metadata request is answered, the file's GET is not
        with pytest.raises(ModelNetworkError, match="HTTP 503") as info:
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert len(fake_hub.gets(TE)) == 1
        assert retry_unless_user_error(None, None, Failed(data=info.value)) is True

    def test_a_failed_listing_is_left_to_the_task_retries(self, fake_hub, tmp_path):
        from prefect.states import Failed

        from anima_lora_flow.tasks.retry import retry_unless_user_error

        fake_hub.faults.status[f"api/{known_models.SINGLE_FILE_REPO}"] = [503]
        with pytest.raises(ModelNetworkError, match="HTTP 503") as info:
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert retry_unless_user_error(None, None, Failed(data=info.value)) is True
        paths = ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert sha(paths.text_encoder) == known_models.TEXT_ENCODER.sha256

    def test_no_internet_names_the_fix(self, hub_online, tmp_path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(ModelInputError, match="cannot reach.*internet"):
            ensure_models("anima-base-v1.0", backend="native", cache_dir=tmp_path / "m", endpoint=closed)

    def test_pinned_hash_differs_from_hub_stops_before_downloading(self, fake_hub, tmp_path):
        fake_hub.repos[known_models.SINGLE_FILE_REPO].files[TE] = b"a new upload"
        with pytest.raises(ModelInputError, match="changed on the Hub"):
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert resolve_gets(fake_hub) == []


class TestDiskSpace:
    def test_not_enough_space_names_needed_and_free(self, fake_hub, tmp_path, monkeypatch):
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr("anima_lora_flow.models.verify.shutil.disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
        with pytest.raises(ModelInputError, match=r"GB needed, 0\.0 GB free") as info:
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
        assert "--cache-dir" in str(info.value)
        assert resolve_gets(fake_hub) == []


class TestDurableCache:
    def test_new_session_copies_instead_of_downloading(self, fake_hub, tmp_path):
        durable = str(tmp_path / "drive" / "anima-models")
        first = ensure_models(
            "anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "s1", durable_cache=durable, endpoint=fake_hub.url
        )
        downloads = len(resolve_gets(fake_hub))
        second = ensure_models(
            "anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "s2", durable_cache=durable, endpoint=fake_hub.url
        )
        assert len(resolve_gets(fake_hub)) == downloads
        assert second.text_encoder != first.text_encoder
        assert sha(second.text_encoder) == known_models.TEXT_ENCODER.sha256
        assert os.path.islink(second.vae)


class TestOffline:
    def test_offline_without_cache_names_the_fix(self, fake_hub, tmp_path, monkeypatch):
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(ModelInputError, match="HF_HUB_OFFLINE"):
            ensure_models("anima-base-v1.0", backend="sd-scripts", cache_dir=tmp_path / "m", endpoint=fake_hub.url)
