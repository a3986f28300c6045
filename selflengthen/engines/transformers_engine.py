"""TransformersEngine: continuous batching on CPU or one GPU, with peft LoRA adapters per role.

Two decode loops, picked by `engine.loop`:
- "slots" (default): our own decode loop (`_SlotDecoder`) with up to `batch_size` slots. Each request is
  prefilled alone (batch 1), then decoded together with the others; a slot whose request ends (eos, stop
  string, budget) yields its Completion at once and is refilled from the queue, so the batch never waits
  for its longest answer. Why not transformers' own continuous batching (`generate_batch`): it has no
  repetition penalty (its logits processors see one token, not the history), no per-request seed and one
  do_sample for all requests. Why not `model.generate`: on a 2-core CPU at 1,000 tokens of context a step
  cost ~1.9 s, >85% of it in the GQA key/value expansion copies and bf16 SDPA with a padding mask, plus
  the cache's `torch.cat` growth; the matmuls of the weights were ~7% (bench/README.md "stream_engine").
  The slot loop keeps one key/value tensor per layer, contiguous over the allocated columns, writes each
  new token in place at its row's own position, and attends with two batched matmuls per layer (query
  heads grouped over their shared key head, no copies) under an additive mask. It runs the model's own
  linear modules (so peft LoRA layers apply) and reproduces its RMSNorm (one fused kernel) and rotary
  embedding with the same results, for Llama-family decoders (llama, mistral without sliding window,
  qwen2, qwen3); other architectures fall back to "static".
- "static": `model.generate` on static batches, grouped by (adapter, sampling params), sorted by prompt
  length, left-padded; a batch runs until its longest answer ends. Kept for architectures the slot loop
  does not know. `max_batch_tokens` caps batch size x (longest prompt + max_new_tokens).

Adapters: each role's folder is loaded with peft under its own name (role + hash of the folder and its
weights file), so round 2's adapter never collides with round 1's; folders no longer named are unloaded.
The slot loop serves requests of different adapters in one batch through peft's mixed-batch forward
(`adapter_names=`, "__base__" for base requests); base requests (adapter None, or a name with no folder)
run without any adapter. Until an adapter is set the model is plain transformers.

Seeds: in the slot loop each sampled request draws from its own `torch.Generator` seeded with its own
`params.seed` (one uniform per token, everything else row-local), so its text does not depend on which
requests share its batch; greedy requests are batch-independent too (in float32; bf16 matmuls may round
differently by batch size). The "static" loop seeds a whole batch from its first request's seed.

dtype "auto": bfloat16 on CUDA; on CPU only where the CPU has native bf16 matmul (avx512_bf16 or AMX).
Elsewhere bf16 is emulated and far slower: on an AVX2 EPYC a bf16 matmul ran at ~1 GFLOP/s against
~100 GFLOP/s in float32 (bench/generation.py measures it), so "auto" picks float32 there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator, Optional, Sequence

from selflengthen.engines.base import (Completion, GenerationStats, Progress, Request, RequestQueue,
                                       SamplingParams, cut_at_stop, generate_via_stream, render_prompt)

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_LOOPS = ("slots", "static")


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (avx512_bf16 / AMX); emulated bf16 is slower than fp32."""
    import torch

    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


class TransformersEngine:
    """The Engine protocol (base.py) on transformers models and peft: a continuous-batching slot loop, or
    `model.generate` on static batches."""

    def __init__(self, model_path: str, dtype: str = "auto", batch_size: int = 32, device: str = "auto",
                 max_batch_tokens: Optional[int] = None, threads: Optional[int] = None, loop: str = "slots"):
        if dtype not in _DTYPES:
            raise ValueError(f"Config error: engine.dtype={dtype!r}; use one of {', '.join(_DTYPES)}.")
        if loop not in _LOOPS:
            raise ValueError(f"Config error: engine.loop={loop!r}; use one of {', '.join(_LOOPS)}.")
        if batch_size < 1:
            raise ValueError(f"Config error: engine.batch_size={batch_size}; it must be >= 1.")
        self.model_path = str(model_path)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.device = device
        self.max_batch_tokens = max_batch_tokens
        self.threads = threads
        self.loop = loop
        self.stats = GenerationStats()
        self.model = None
        self.tokenizer = None
        # Extra keyword arguments for every `model.generate` call (benchmarks use min_new_tokens to force a
        # fixed answer length; the slot loop honours that key only, other keys send a call to "static").
        # Not part of the Engine protocol.
        self.generate_overrides: dict = {}
        self._slots_ok: Optional[bool] = None  # can the slot loop run this model? decided on first use
        self._adapters: dict[str, str] = {}  # peft adapter name -> folder
        self._roles: dict[str, Optional[str]] = {}  # adapter name the method uses -> peft adapter name
        self._torch_dtype = None
        self._pending: Optional[dict] = None  # role -> folder while released (see release())

    # ---- lifecycle -------------------------------------------------------------------------------
    @property
    def capacity(self) -> Optional[int]:
        """Sequences decoded at once, stated only where an extra sequence is nearly free (the slot loop on a
        GPU): on a CPU a decode step costs more with every row, so idle slots are better left idle than
        given to speculative attempts (stages.common.Attempts)."""
        return self.batch_size if self.loop == "slots" and str(self.device).startswith("cuda") else None

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
        self._slots_ok = None
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
        self._slots_ok = None
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
    def stream(self, queue: RequestQueue) -> Iterator[Completion]:
        """Yield each completion as soon as it finishes; requests added to `queue` meanwhile are served too."""
        self._reload_if_released()
        self._require_loaded()
        if not self._use_slots():
            return self._stream_static(queue)
        return _SlotDecoder(self).run(queue)

    def _stream_static(self, queue: RequestQueue) -> Iterator[Completion]:
        """Static batches of up to batch_size requests from the queue's head, each completion (with why it
        ended) yielded as soon as its batch returns."""
        while queue:
            yield from self.complete_static(queue.take(self.batch_size))

    def generate(self, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[str]:
        """One text per request, in request order (the slot loop's stream, or static batches)."""
        self._reload_if_released()
        self._require_loaded()
        if self._use_slots():
            return generate_via_stream(self, requests, progress)
        return self.generate_static(requests, progress)

    def _use_slots(self) -> bool:
        """The slot loop, unless engine.loop=static, the architecture is not one it knows, or
        generate_overrides holds keys other than min_new_tokens."""
        if self.loop != "slots" or set(self.generate_overrides) - {"min_new_tokens"}:
            return False
        if self._slots_ok is None:
            why = _slot_loop_unsupported(self._base_model())
            if why:
                import logging

                logging.getLogger(__name__).warning("engine.loop=slots: %s; using static batches", why)
            self._slots_ok = not why
        return self._slots_ok

    def _base_model(self):
        """The transformers model under peft's wrapper (its modules carry the LoRA layers)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _peft_name(self, adapter: Optional[str]) -> Optional[str]:
        """The peft adapter a request runs with: None for base requests and names with no folder."""
        return self._roles.get(adapter) if adapter else None

    def generate_static(self, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[str]:
        """The "static" loop: `model.generate` on batches grouped by adapter and sampling params."""
        return [c.text for c in self.complete_static(requests, progress)]

    def complete_static(self, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[Completion]:
        """The static loop's completions, in request order, each with its finish_reason."""
        import torch

        self._reload_if_released()
        self._require_loaded()
        started = time.perf_counter()
        out: list[Optional[Completion]] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        encoded: list[list[int]] = []
        for i, req in enumerate(requests):
            encoded.append(self._encode(req))
            key = (self._peft_name(req.adapter), dataclasses.replace(req.params, seed=None))
            groups.setdefault(key, []).append(i)
        with torch.inference_mode():
            for (adapter, params), idxs in groups.items():
                with self._adapter_context(adapter):
                    # Longest first: a batch that does not fit in memory fails at once, not at the end.
                    idxs = sorted(idxs, key=lambda i: -len(encoded[i]))
                    for batch in self._batches(idxs, encoded, params.max_new_tokens):
                        seed = requests[batch[0]].params.seed
                        done = self._generate_batch([encoded[i] for i in batch], params, seed)
                        for i, (text, n, reason) in zip(batch, done):
                            out[i] = Completion(requests[i].id, text, len(encoded[i]), n, reason)
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

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams,
                        seed: Optional[int]) -> list[tuple[str, int, str]]:
        """(text, new tokens, finish_reason) per prompt: "stop" when the row ended on an end token or a stop
        string, "length" when it ran to max_new_tokens."""
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
        if params.min_new_tokens:  # a batch shares its params (seed aside): one floor for all its rows
            kwargs.update(min_new_tokens=params.min_new_tokens)
        kwargs.update(self.generate_overrides)
        if seed is not None:
            torch.manual_seed(seed)
        generated = self.model.generate(**enc, **kwargs)
        new = generated[:, enc["input_ids"].shape[1]:].tolist()
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        eos = set(self._eos_ids())
        out = []
        for row in new:
            end = next((k for k, t in enumerate(row) if t in eos), None)
            row = row[:len(row) if end is None else end]
            while row and row[-1] == tok.pad_token_id:  # a row finished by a stop string is padded after it
                row.pop()
            self.stats.new_tokens += len(row)
            # Rows stop at different steps (eos, stop string): cut each one at its own stop string.
            full = tok.decode(row, skip_special_tokens=True)
            text = cut_at_stop(full, stops)
            ended = end is not None or len(row) < params.max_new_tokens or len(text) < len(full) or \
                any(s and full.endswith(s) for s in stops)
            out.append((text, len(row), "stop" if ended else "length"))
        return out

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


# ---- the slot loop ---------------------------------------------------------------------------------

_SLOT_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # decoder layers whose forward _SlotDecoder reproduces
_FUSABLE_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")  # weight * x / rms(x), in float
_ROW_STEP = 8  # key/value rows are allocated in steps of this many, up to batch_size
_CAP_STEP = 128  # key/value columns are allocated in steps of this many: fewer regrowth copies vs more masked work


def _slot_loop_unsupported(model) -> str:
    """Why the slot loop cannot run `model` ('' when it can): it reproduces the Llama-family decoder layer."""
    cfg = model.config
    if cfg.model_type not in _SLOT_TYPES:
        return f"model_type {cfg.model_type!r} is not one of {', '.join(_SLOT_TYPES)}"
    windowed = getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", cfg.model_type == "mistral")
    if windowed or "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("layers", "embed_tokens", "norm", "rotary_emb")):
        return "unexpected module layout"
    return ""


def _lin(module, x, names):
    """A linear layer; peft LoRA layers get the per-row adapter names (peft's mixed-batch forward)."""
    if names is not None and hasattr(module, "lora_A"):
        return module(x, adapter_names=names)
    return module(x)


@dataclasses.dataclass
class _Slot:
    """One request in flight: its row's state between decode steps."""

    req: Request
    prompt: list[int]
    lora: str  # peft adapter name, or "__base__"
    gen: Optional[object]  # torch.Generator of a sampled request, seeded with its own params.seed
    stops: list[str]
    window: int  # tokens decoded from the tail to look for a stop string
    out: list[int] = dataclasses.field(default_factory=list)
    length: int = 0  # tokens in the key/value cache
    next_tok: int = -1  # chosen, not yet in the cache


class _SlotDecoder:
    """Continuous batching for one `stream` call: up to `batch_size` requests decode together, each in its
    own row of one key/value tensor per layer ([layers, rows, kv heads, columns, head dim]); active rows are
    always rows 0..n-1, so every step works on contiguous views. A request is prefilled alone (batch 1) into
    its row; a finished row is filled by moving the last row into it, and new requests append rows."""

    def __init__(self, engine: TransformersEngine):
        import torch

        self.torch, self.engine, self.tok = torch, engine, engine.tokenizer
        model = engine._base_model()
        self.inner, self.lm_head, cfg = model.model, model.lm_head, model.config
        self.layers = list(self.inner.layers)
        attn = self.layers[0].self_attn
        self.hd, self.scaling = attn.head_dim, attn.scaling
        self.nh, self.kvh = cfg.num_attention_heads, cfg.num_key_value_heads
        self.dtype, self.device = model.lm_head.weight.dtype, model.lm_head.weight.device
        self.vocab = model.lm_head.out_features
        self.rows = engine.batch_size
        self.peft = bool(engine._adapters)
        self.eos = set(engine._eos_ids())
        self.eos_t = torch.tensor(sorted(self.eos), device=self.device)
        self.min_new = int(engine.generate_overrides.get("min_new_tokens") or 0)
        self.seen = torch.zeros(self.rows, self.vocab, dtype=torch.bool, device=self.device)  # repetition penalty
        self.K = self.V = None
        self.cap = self.alloc = 0  # key/value columns and rows allocated
        self.slots: list[_Slot] = []
        self.held: Optional[Request] = None  # taken from the queue, waiting for room under max_batch_tokens

    # ---- scheduling ------------------------------------------------------------------------------
    def run(self, queue: RequestQueue) -> Iterator[Completion]:
        stats = self.engine.stats
        while True:
            started = time.perf_counter()
            with self.torch.inference_mode():  # only around our work: the consumer runs between yields
                if queue.cancelled:
                    self.cancel(queue.cancelled)
                done = self.fill(queue)
                if self.slots:
                    done += self.step()
            stats.seconds += time.perf_counter() - started
            yield from done
            if not self.slots and not queue and self.held is None:
                return

    def fill(self, queue: RequestQueue) -> list[Completion]:
        done = []
        while len(self.slots) < self.rows and (queue or self.held is not None):
            req = self.held if self.held is not None else queue.take(1)[0]
            self.held = None
            prompt = self.engine._encode(req)
            budget = self.engine.max_batch_tokens
            if budget and self.slots and self._reserved() + len(prompt) + req.params.max_new_tokens > budget:
                self.held = req
                break
            finished = self.admit(req, prompt)
            if finished is not None:
                done.append(finished)
        return done

    def cancel(self, ids: set[str]) -> None:
        """Drop the rows (and the held request) the consumer withdrew while in flight: no completion comes for
        them, and their slots take queued requests at once (vLLM aborts them the same way)."""
        if self.held is not None and self.held.id in ids:
            ids.discard(self.held.id)
            self.held = None
        for row in reversed(range(len(self.slots))):  # _drop moves the last row in: walk from the end
            if self.slots[row].req.id in ids:
                ids.discard(self.slots[row].req.id)
                self._drop(row)

    def _reserved(self) -> int:
        return sum(len(s.prompt) + s.req.params.max_new_tokens for s in self.slots)

    def admit(self, req: Request, prompt: list[int]) -> Optional[Completion]:
        """Prefill `req` into a new last row and choose its first token."""
        torch, p = self.torch, req.params
        if p.max_new_tokens <= 0:
            return self._completion(req, prompt, [], "length")
        gen = None
        if not p.greedy:
            seed = p.seed if p.seed is not None else int(torch.randint(2 ** 62, ()))
            gen = torch.Generator(device=self.device).manual_seed(seed)
        stops = [s for s in p.stop if s]
        lora = self.engine._peft_name(req.adapter) or "__base__"
        slot = _Slot(req, prompt, lora, gen, stops, 4 + 3 * max((len(s) for s in stops), default=0))
        row = len(self.slots)
        self.slots.append(slot)
        self._ensure_cap(len(prompt) + 1, rows=len(self.slots))
        self.seen[row].zero_()
        ids = torch.tensor(prompt, device=self.device)
        self.seen[row, ids] = True
        logits = self._prefill(row, ids, lora)
        slot.length = len(prompt)
        tok = self._choose(logits, [slot], slice(row, row + 1))[0]
        self.seen[row, tok] = True
        finished = self._accept(slot, tok)
        if finished is not None:
            self.slots.pop()
        return finished

    def step(self) -> list[Completion]:
        """One decode step for every active row; finished rows are removed (the last row moves in)."""
        torch, slots = self.torch, self.slots
        n = len(slots)
        pos = [s.length for s in slots]
        self._ensure_cap(max(pos) + 1)
        toks = torch.tensor([s.next_tok for s in slots], device=self.device)
        logits = self._decode(toks, torch.tensor(pos, device=self.device))
        for s in slots:
            s.length += 1
        chosen = self._choose(logits, slots, slice(0, n))
        self.seen[torch.arange(n, device=self.device), torch.tensor(chosen, device=self.device)] = True
        finished = [(row, c) for row, (s, t) in enumerate(zip(slots, chosen)) if (c := self._accept(s, t))]
        for row, _ in reversed(finished):
            self._drop(row)
        extra = self.engine.stats.extra
        extra["decode_steps"] = extra.get("decode_steps", 0) + 1
        extra["decode_rows"] = extra.get("decode_rows", 0) + n  # / decode_steps = mean batch actually decoded
        return [c for _, c in finished]

    def _drop(self, row: int) -> None:
        last = len(self.slots) - 1
        if row != last:
            cols = self.slots[last].length
            self.K[:, row, :, :cols] = self.K[:, last, :, :cols]
            self.V[:, row, :, :cols] = self.V[:, last, :, :cols]
            self.seen[row] = self.seen[last]
            self.slots[row] = self.slots[last]
        self.slots.pop()
        longest = max((s.length for s in self.slots), default=0) + 1
        if self.cap > _round_up(longest, _CAP_STEP) + _CAP_STEP:  # the longest answers left: attend over less
            self._resize(_round_up(longest, _CAP_STEP))

    # ---- one token per row -----------------------------------------------------------------------
    def _accept(self, slot: _Slot, tok: int) -> Optional[Completion]:
        """Append the chosen token; a Completion when the request ends here (eos, stop string, budget)."""
        if tok in self.eos:  # eos ends the answer and is not part of its text
            return self._completion(slot.req, slot.prompt, slot.out, "stop", slot.stops)
        slot.out.append(tok)
        if slot.stops:
            tail = self.tok.decode(slot.out[-slot.window:], skip_special_tokens=True)
            if any(s in tail for s in slot.stops):
                return self._completion(slot.req, slot.prompt, slot.out, "stop", slot.stops)
        if len(slot.out) >= slot.req.params.max_new_tokens:
            return self._completion(slot.req, slot.prompt, slot.out, "length", slot.stops)
        slot.next_tok = tok
        return None

    def _completion(self, req, prompt, out, reason, stops=()) -> Completion:
        stats = self.engine.stats
        stats.requests += 1
        stats.prompt_tokens += len(prompt)
        stats.new_tokens += len(out)
        text = cut_at_stop(self.tok.decode(out, skip_special_tokens=True), stops)
        return Completion(req.id, text, len(prompt), len(out), reason)

    def _choose(self, logits, slots: list[_Slot], rows: slice) -> list[int]:
        """Next token per row, HF's order: repetition penalty (over prompt + answer), then greedy argmax, or
        temperature, top-k, top-p and one uniform draw from the row's own generator."""
        torch = self.torch
        params = [s.req.params for s in slots]
        if any(p.repetition_penalty != 1.0 for p in params):
            pen = torch.tensor([p.repetition_penalty for p in params], device=self.device)[:, None]
            penalised = torch.where(logits < 0, logits * pen, logits / pen)
            logits = torch.where(self.seen[rows], penalised, logits)
        floors = [max(self.min_new, p.min_new_tokens) for p in params]  # benchmarks' engine-wide floor, or the request's
        if any(floors):  # no eos before min_new_tokens
            early = [i for i, s in enumerate(slots) if len(s.out) + 1 < floors[i]]
            if early:
                logits[torch.tensor(early)[:, None], self.eos_t[None, :]] = float("-inf")
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if len(sampled) == len(slots):  # every row sampled: no argmax, no copy of the logits
            return self._sample(logits, slots).tolist()
        chosen = logits.argmax(-1)
        if sampled:
            chosen[torch.tensor(sampled)] = self._sample(logits[sampled], [slots[i] for i in sampled])
        return chosen.tolist()

    def _sample(self, logits, slots: list[_Slot]):
        torch = self.torch
        params = [s.req.params for s in slots]
        ks = [p.top_k if p.top_k and p.top_k > 0 else self.vocab for p in params]
        k = min(self.vocab, max(ks))
        temp = torch.tensor([p.temperature for p in params], device=self.device)[:, None]
        vals, ids = logits.topk(k, dim=-1)  # sorted, largest first; temperature keeps the order, so it
        vals = vals / temp                   # scales the k kept values only, not the whole vocabulary
        if min(ks) < k:
            vals = vals.masked_fill(torch.arange(k)[None, :] >= torch.tensor(ks)[:, None], float("-inf"))
        probs = vals.softmax(-1)
        if any(p.top_p < 1.0 for p in params):  # keep the smallest prefix whose mass reaches top_p (HF's rule)
            top_p = torch.tensor([p.top_p for p in params], device=self.device)[:, None]
            drop = (probs.cumsum(-1) - probs) >= top_p
            drop[:, 0] = False
            probs = probs.masked_fill(drop, 0.0)
        cdf = probs.cumsum(-1)
        u = torch.stack([torch.rand((), generator=s.gen, device=self.device) for s in slots])
        pick = (cdf < (u * cdf[:, -1])[:, None]).sum(-1).clamp_(max=k - 1)
        return ids.gather(1, pick[:, None])[:, 0]

    # ---- the model ---------------------------------------------------------------------------------
    def _prefill(self, row: int, ids, lora: str):
        """Run one prompt (batch 1, causal attention without a mask), write its keys/values into `row`,
        return the last position's logits [1, vocab]."""
        torch, T = self.torch, ids.shape[0]
        names = [lora] if self.peft else None
        x = self.inner.embed_tokens(ids[None])
        cos, sin = self.inner.rotary_emb(x, torch.arange(T, device=self.device)[None])
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            q, k, v = self._qkv(a, self._norm(layer.input_layernorm, x), names, cos, sin)
            self.K[i, row, :, :T] = k[0]
            self.V[i, row, :, :T] = v[0]
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                                 scale=self.scaling)
            x = x + _lin(a.o_proj, o.transpose(1, 2).reshape(1, T, -1), names)
            x = x + self._mlp(layer, x, names)
        return self.lm_head(self._norm(self.inner.norm, x[:, -1:]))[:, -1].float()

    def _decode(self, toks, pos):
        """One token for each of the n active rows at its own position; logits [n, vocab]."""
        torch, n, hd = self.torch, toks.shape[0], self.hd
        names = [s.lora for s in self.slots] if self.peft else None
        x = self.inner.embed_tokens(toks[:, None])
        cos, sin = self.inner.rotary_emb(x, pos[:, None])
        # Each row attends to its own columns 0..pos (its new token included); the rest are masked.
        cols = torch.arange(self.cap, device=self.device)
        bias = torch.zeros(n, 1, 1, self.cap, device=self.device).masked_fill_(
            (cols[None, :] > pos[:, None]).view(n, 1, 1, self.cap), float("-inf"))
        # Where each row's new key/value goes in a layer's [rows * kv heads * columns, head dim] view: one
        # index_copy_ per tensor and layer, for every row and head at once.
        heads = torch.arange(self.kvh, device=self.device)
        at = ((torch.arange(n, device=self.device)[:, None] * self.kvh + heads[None, :]) * self.cap
              + pos[:, None]).reshape(-1)
        g, nq = self.nh // self.kvh, self.nh
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            q, k, v = self._qkv(a, self._norm(layer.input_layernorm, x), names, cos, sin)
            self.K[i].view(-1, hd).index_copy_(0, at, k.reshape(-1, hd))
            self.V[i].view(-1, hd).index_copy_(0, at, v.reshape(-1, hd))
            K, V = self.K[i, :n], self.V[i, :n]  # contiguous [n, kv heads, cap, head dim]
            # Query heads grouped over their shared key head: two batched matmuls, no repeat_kv copies.
            scores = torch.matmul(q.reshape(n, self.kvh, g, hd), K.transpose(-1, -2)).float()
            probs = scores.mul_(self.scaling).add_(bias).softmax(-1).to(self.dtype)
            o = torch.matmul(probs, V).reshape(n, 1, nq * hd)
            x = x + _lin(a.o_proj, o, names)
            x = x + self._mlp(layer, x, names)
        return self.lm_head(self._norm(self.inner.norm, x))[:, -1].float()

    def _norm(self, module, x):
        """RMSNorm as one fused kernel (same result as the Llama-family module, which takes seven); any other
        norm runs its own forward."""
        if type(module).__name__ not in _FUSABLE_NORMS:
            return module(x)
        fused = self.torch.nn.functional.rms_norm(x.float(), module.weight.shape, None, module.variance_epsilon)
        return module.weight * fused.to(x.dtype)

    def _qkv(self, a, h, names, cos, sin):
        """Queries, keys (rotated together in one call) and values, each [n, heads, T, head dim]."""
        n, T = h.shape[:2]
        q = _lin(a.q_proj, h, names).view(n, T, -1, self.hd)
        k = _lin(a.k_proj, h, names).view(n, T, -1, self.hd)
        v = _lin(a.v_proj, h, names).view(n, T, -1, self.hd)
        if hasattr(a, "q_norm"):  # qwen3
            q, k = a.q_norm(q), a.k_norm(k)
        qk = _rope(self.torch.cat((q, k), 2).transpose(1, 2), cos[:, None], sin[:, None])
        return qk[:, :self.nh], qk[:, self.nh:], v.transpose(1, 2)

    def _mlp(self, layer, x, names):
        mlp = layer.mlp
        h = self._norm(layer.post_attention_layernorm, x)
        return _lin(mlp.down_proj, mlp.act_fn(_lin(mlp.gate_proj, h, names)) * _lin(mlp.up_proj, h, names), names)

    # ---- the key/value tensors ---------------------------------------------------------------------
    def _ensure_cap(self, columns: int, rows: int = 0) -> None:
        """Room for `columns` keys/values in `rows` rows. Rows are allocated as requests arrive (in steps of
        _ROW_STEP up to batch_size), so a large batch_size costs memory only when that many requests are in
        flight."""
        if columns > self.cap or rows > self.alloc:
            self._resize(max(self.cap, _round_up(columns, _CAP_STEP)),
                         max(self.alloc, min(self.rows, _round_up(rows, _ROW_STEP))))

    def _resize(self, cap: int, rows: Optional[int] = None) -> None:
        """Reallocate the key/value tensors with `cap` columns (zeros: masked columns must stay finite)."""
        rows = self.alloc if rows is None else rows
        shape = (len(self.layers), rows, self.kvh, cap, self.hd)
        K = self.torch.zeros(shape, dtype=self.dtype, device=self.device)
        V = self.torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.K is not None:
            keep, live = min(cap, self.cap), min(len(self.slots), self.alloc, rows)
            K[:, :live, :, :keep] = self.K[:, :live, :, :keep]
            V[:, :live, :, :keep] = self.V[:, :live, :, :keep]
        self.K, self.V, self.cap, self.alloc = K, V, cap, rows


def _rope(x, cos, sin):
    """Rotary embedding, the Llama family's formula (x * cos + rotate_half(x) * sin) with the same operations in
    the same order as transformers' apply_rotary_pos_emb, so results are bit-identical."""
    import torch

    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _round_up(x: int, step: int) -> int:
    return -(-x // step) * step
