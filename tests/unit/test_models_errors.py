"""Bad `model.path` values end in one fast paragraph (cause and fix), never a traceback or 50 s of retries."""

from __future__ import annotations

import json
import socket
import time

import pytest

from selflengthen.engines import models
from selflengthen.engines.models import EMBEDDED, ModelNotFound, check_model_path, resolve_model_path


@pytest.fixture(autouse=True)
def fresh_probe():
    models._hub_reachable.cache_clear()
    yield
    models._hub_reachable.cache_clear()


@pytest.fixture
def online_capable(monkeypatch):
    """No offline flag and no proxy: whether the hub can be used is up to the connection probe."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # huggingface_hub reads the flags once, at import
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def offline(monkeypatch) -> None:
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it (it reads the environment once, when imported)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache; `add(repo_id, weights=True)` puts a snapshot in it."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def add(repo_id: str, weights: bool = True):
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / "abc123"
        snap.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
        (snap / "config.json").write_text("{}")
        if weights:
            (snap / "model.safetensors").write_bytes(b"w")
        return snap
    return add


def refused(path: str, resolve_too: bool = True) -> str:
    start = time.monotonic()
    with pytest.raises(ModelNotFound) as err:
        check_model_path(path)
    if resolve_too:
        with pytest.raises(ModelNotFound):
            resolve_model_path(path)
    msg = str(err.value)
    assert time.monotonic() - start < 5, "a bad model.path must fail in seconds"
    assert "\n" not in msg and f"model.path={path!r}" in msg and "Fix:" in msg
    return msg


def test_folder_without_config_json(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"w")
    assert "no config.json" in refused(str(tmp_path))


def test_lora_adapter_folder_names_the_base_model_key(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    msg = refused(str(tmp_path))
    assert "LoRA adapter" in msg and "base_model_name_or_path" in msg


def test_plain_file(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert "is a file, not a model folder" in refused(str(tmp_path / "model.gguf"))


def test_missing_local_path(tmp_path):
    assert "does not exist" in refused(str(tmp_path / "nope"))


def test_folder_with_config_but_no_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "no weights" in refused(str(tmp_path))


def test_relative_folder_that_exists_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)  # looks like a hub id, but it is a folder here
    assert "no config.json" in refused("models/mine")


def test_invalid_hub_id():
    assert "neither an existing local path nor a valid Hugging Face id" in refused("a/b/c")


def test_unknown_embedded_model():
    assert EMBEDDED in refused("embedded:llama-70b")


def test_hub_id_offline_and_not_cached(hf_cache, monkeypatch):
    offline(monkeypatch)
    msg = refused("someone/not-cached-model", resolve_too=False)
    assert "not in the local cache" in msg and "HF_HUB_OFFLINE" in msg and "hf download" in msg
    # resolving passes an uncached id through (a fake engine's placeholder is never loaded)
    assert resolve_model_path("someone/not-cached-model") == "someone/not-cached-model"


def test_hub_id_without_network_fails_fast(hf_cache, online_capable, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    msg = refused("someone/not-cached-model", resolve_too=False)
    assert "hub.invalid:443 cannot be reached" in msg


def test_hub_that_never_answers_is_given_up_on(hf_cache, online_capable, monkeypatch):
    monkeypatch.setattr(models, "_HUB_PROBE_SECONDS", 0.2)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(3))
    assert "no answer within 0.2 s" in refused("someone/not-cached-model", resolve_too=False)


def test_cached_hub_id_without_network_loads_the_cached_copy(hf_cache, online_capable, monkeypatch):
    snap = hf_cache("org/tiny")
    monkeypatch.setattr(models, "_hub_reachable", lambda: (False, "no network"))
    check_model_path("org/tiny")
    assert resolve_model_path("org/tiny") == str(snap)  # a local folder: loading makes no network calls


def test_cached_hub_id_offline_loads_the_cached_copy(hf_cache, monkeypatch):
    snap = hf_cache("org/tiny")
    offline(monkeypatch)
    assert resolve_model_path("org/tiny") == str(snap)


def test_partly_cached_hub_id_counts_as_not_cached(hf_cache, monkeypatch):
    hf_cache("org/tiny", weights=False)
    offline(monkeypatch)
    assert "not in the local cache" in refused("org/tiny", resolve_too=False)


def test_uncached_hub_id_passes_when_the_hub_answers(hf_cache, online_capable, monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda: (True, ""))
    check_model_path("org/big")  # downloaded when the engine loads
    assert resolve_model_path("org/big") == "org/big"


def test_proxy_is_probed_instead_of_the_hub(online_capable, monkeypatch):
    seen = []
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setattr(socket, "create_connection", lambda addr, timeout: seen.append(addr) or socket.socket())
    assert models._hub_reachable() == (True, "")
    assert seen == [("proxy.example", 3128)]


def test_embedded_model_with_an_unwritable_cache(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelNotFound) as err:
        check_model_path(EMBEDDED, str(tmp_path / "file" / "cache"))
    assert "not writable" in str(err.value) and "model.cache_dir" in str(err.value)


def test_embedded_model_passes_the_check(tmp_path):
    check_model_path(EMBEDDED, str(tmp_path))
    assert [p for p in tmp_path.iterdir()] == []  # the check converts nothing


@pytest.mark.parametrize("name", ["[/red]", "[bold]x[/bold]", "[/]", ":smile:", "[link=file:///etc]x"])
def test_print_error_shows_markup_characters_literally(tmp_path, monkeypatch, name):
    import io

    from rich.console import Console

    from selflengthen.support import ui

    out = io.StringIO()
    monkeypatch.setattr(ui, "console", Console(file=out, width=400, color_system=None))
    bad = tmp_path / name
    with pytest.raises(ModelNotFound) as err:
        check_model_path(str(bad))
    ui.print_error(str(err.value))  # before the fix: rich.errors.MarkupError for "[/red]"
    printed = out.getvalue()
    assert printed.startswith("error: ") and str(bad) in printed and "😄" not in printed
