"""TransformersEngine: batched `model.generate` on CPU or one GPU, with peft LoRA adapters per role.

How a call is scheduled: requests are grouped by (adapter, sampling params without the seed), so a batch
never mixes adapters or decoding settings; inside a group they are sorted by prompt length (less padding)
and cut into batches of `batch_size` (fewer if `max_batch_tokens` caps prompt+answer tokens). Prompts are
left-padded. Texts come back in the original request order.

Adapters: each role's folder is loaded with peft under its own name (role + hash of the folder and its
weights file), so round 2's adapter never collides with round 1's; folders no longer named are unloaded.
Base-model requests run inside `disable_adapter()`. Until an adapter is set the model is plain transformers.

Seeds: `torch.manual_seed` is set once per batch from the first request's seed, so a sampled request is
reproducible for the same batch composition, not on its own (per-request generators are not supported by
`generate`). Greedy requests (temperature <= 0) do not depend on seeds or on the batch (in float32).

dtype "auto": bfloat16 on CUDA; on CPU only where the CPU has native bf16 matmul (avx512_bf16 or AMX).
Elsewhere bf16 is emulated and far slower: on this AVX2 EPYC a bf16 matmul ran at ~1 GFLOP/s against
~100 GFLOP/s in float32 (bench/generation.py measures it), so "auto" picks float32 there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

from selflengthen.engines.base import (GenerationStats, Progress, Request, SamplingParams, cut_at_stop,
                                       render_prompt)

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (avx512_bf16 / AMX); emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class TransformersEngine:
    """The Engine protocol (base.py) on top of transformers' `generate` and peft."""

    def __init__(self, model_path: str, dtype: str = "auto", batch_size: int = 16, device: str = "auto",
                 max_batch_tokens: Optional[int] = None, threads: Optional[int] = None):
        if dtype not in _DTYPES:
            raise ValueError(f"Config error: engine.dtype={dtype!r}; use one of {', '.join(_DTYPES)}.")
        if batch_size < 1:
            raise ValueError(f"Config error: engine.batch_size={batch_size}; it must be >= 1.")
        self.model_path = str(model_path)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.device = device
        self.max_batch_tokens = max_batch_tokens
        self.threads = threads
        self.stats = GenerationStats()
        self.model = None
        self.tokenizer = None
        # Extra keyword arguments for every `model.generate` call (benchmarks use min_new_tokens to force a
        # fixed answer length). Not part of the Engine protocol.
        self.generate_overrides: dict = {}
        self._adapters: dict[str, str] = {}  # peft adapter name -> folder
        self._roles: dict[str, Optional[str]] = {}  # adapter name the method uses -> peft adapter name
        self._torch_dtype = None
        self._pending: Optional[dict] = None  # role -> folder while released (see release())

    # ---- lifecycle -------------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar would tear through the stage's rich bar
        if self.threads:
            torch.set_num_threads(int(self.threads))
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._torch_dtype = getattr(torch, self._resolve_dtype(torch))
        tok = AutoTokenizer.from_pretrained(self.model_path, padding_side="left")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self._torch_dtype)
        self.model = model.to(self.device).eval()
        self.tokenizer = tok
        self.stats.extra.update(dtype=str(self._torch_dtype).replace("torch.", ""), device=self.device)

    def _resolve_dtype(self, torch) -> str:
        if self.dtype != "auto":
            return self.dtype
        if str(self.device).startswith("cuda"):
            # float16 would be faster on pre-Ampere GPUs but overflows in some models: float32 is the safe default.
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        return "bfloat16" if cpu_has_fast_bf16() else "float32"

    def release(self) -> None:
        """Give the weights back before training (the trainer loads its own copy, and on a small machine the
        two together would not fit): the model is dropped, and the next generate() reloads it with the same
        adapters — about a second for the embedded model, against minutes of generation per round."""
        if self.model is None:
            return
        pending = {role: (self._adapters[name] if name else None) for role, name in self._roles.items()}
        self.close()
        self._pending = pending

    def _reload_if_released(self) -> None:
        if self.model is None and self._pending is not None:
            pending, self._pending = self._pending, None
            self.load()
            self.set_adapters(pending)

    def close(self) -> None:
        cuda = str(self.device).startswith("cuda")
        self._pending = None
        self.model = None
        self.tokenizer = None
        self._adapters.clear()
        self._roles = {}
        import gc

        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()

    # ---- adapters --------------------------------------------------------------------------------
    def set_adapters(self, adapters: dict[str, Optional[str]]) -> None:
        if self.model is None and self._pending is not None:  # released: applied when generate() reloads
            self._pending = dict(adapters)
            return
        self._require_loaded()
        wanted: dict[str, str] = {}  # peft adapter name -> folder
        roles: dict[str, Optional[str]] = {r: None for r in adapters}
        for role, folder in adapters.items():
            if folder is not None:
                name = _adapter_name(role, folder)
                wanted[name] = str(folder)
                roles[role] = name
        for name, folder in wanted.items():
            if name not in self._adapters:
                self._load_adapter(name, folder)
        stale = [n for n in self._adapters if n not in wanted]
        if stale and not wanted:
            # Nothing left to serve: go back to the plain model (unload removes the LoRA layers unmerged).
            self.model = self.model.unload()
            self._adapters.clear()
        else:
            if stale:
                self.model.set_adapter(next(iter(wanted)))  # never delete the active adapter
            for name in stale:
                self.model.delete_adapter(name)
                del self._adapters[name]
        self._roles = roles

    def _load_adapter(self, name: str, folder: str) -> None:
        if not (Path(folder) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter folder {folder} has no adapter_config.json")
        if not self._adapters:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name, is_trainable=False)
        else:
            self.model.load_adapter(folder, adapter_name=name, is_trainable=False)
        self.model.eval()
        self._adapters[name] = folder

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[str]:
        import torch

        self._reload_if_released()
        self._require_loaded()
        started = time.perf_counter()
        out: list[Optional[str]] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        encoded: list[list[int]] = []
        for i, req in enumerate(requests):
            encoded.append(self._encode(req))
            key = (self._roles.get(req.adapter) if req.adapter else None,
                   dataclasses.replace(req.params, seed=None))
            groups.setdefault(key, []).append(i)
        with torch.inference_mode():
            for (adapter, params), idxs in groups.items():
                with self._adapter_context(adapter):
                    # Longest first: a batch that does not fit in memory fails at once, not at the end.
                    idxs = sorted(idxs, key=lambda i: -len(encoded[i]))
                    for batch in self._batches(idxs, encoded, params.max_new_tokens):
                        seed = requests[batch[0]].params.seed
                        texts = self._generate_batch([encoded[i] for i in batch], params, seed)
                        for i, text in zip(batch, texts):
                            out[i] = text
                        self.stats.requests += len(batch)
                        if progress is not None:
                            progress(len(batch))
        self.stats.seconds += time.perf_counter() - started
        return out  # type: ignore[return-value]

    def _encode(self, req: Request) -> list[int]:
        text = render_prompt(self.tokenizer, req)
        # A chat prompt already holds every special token its template wants; a raw prompt gets the
        # tokenizer's defaults (a BOS for tokenizers that add one), as vLLM does for text prompts.
        return self.tokenizer(text, add_special_tokens=req.prompt is not None)["input_ids"]

    def _batches(self, idxs: list[int], encoded: list[list[int]], max_new: int):
        batch: list[int] = []
        for i in idxs:
            if batch:
                longest = max(len(encoded[batch[0]]), len(encoded[i]))  # idxs are sorted longest first
                too_many = self.max_batch_tokens and (len(batch) + 1) * (longest + max_new) > self.max_batch_tokens
                if len(batch) >= self.batch_size or too_many:
                    yield batch
                    batch = []
            batch.append(i)
        if batch:
            yield batch

    def _adapter_context(self, adapter: Optional[str]):
        if not self._adapters:
            return nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return nullcontext()

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, seed: Optional[int]) -> list[str]:
        import torch

        tok = self.tokenizer
        enc = tok.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        kwargs = dict(max_new_tokens=params.max_new_tokens, repetition_penalty=params.repetition_penalty,
                      pad_token_id=tok.pad_token_id, eos_token_id=self._eos_ids())
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                          top_k=params.top_k if params.top_k and params.top_k > 0 else None)
        stops = [s for s in params.stop if s]
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=tok)
        kwargs.update(self.generate_overrides)
        if seed is not None:
            torch.manual_seed(seed)
        generated = self.model.generate(**enc, **kwargs)
        new = generated[:, enc["input_ids"].shape[1]:].tolist()
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        eos = set(self._eos_ids())
        texts = []
        for row in new:
            row = row[:next((k for k, t in enumerate(row) if t in eos), len(row))]
            while row and row[-1] == tok.pad_token_id:  # a row finished by a stop string is padded after it
                row.pop()
            self.stats.new_tokens += len(row)
            # Rows stop at different steps (eos, stop string): cut each one at its own stop string.
            texts.append(cut_at_stop(tok.decode(row, skip_special_tokens=True), stops))
        return texts

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _require_loaded(self) -> None:
        if self.model is None:
            raise RuntimeError("TransformersEngine: call load() first")


def _adapter_name(role: str, folder: str) -> str:
    """role + hash of the folder and its weights file's size/mtime: a retrained adapter at the same path
    gets a new name, so it is reloaded rather than served stale."""
    path = Path(folder).resolve()
    key = str(path)
    for weights in ("adapter_model.safetensors", "adapter_model.bin"):
        if (path / weights).exists():
            st = os.stat(path / weights)
            key += f":{st.st_size}:{st.st_mtime_ns}"
            break
    return f"{role}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
