"""The transformers backend's model side: loading, chat templates, continuous-batching
generation and sentence embeddings. The HTTP layer is ``server.py``."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

from sllm.backends import tool_calls
from sllm.backends.detokenize import IncrementalDecoder
from sllm.backends.engine import (
    Piece,
    SamplingParams,
    TokenLogprob,
    check_context,
    default_limit,
    known_ids,
)
from sllm.backends.hf_embedding import embed_batch, sentence_transformers_pooling
from sllm.backends.hf_loading import device_of, dtype_of, gpu_count, is_generative
from sllm.backends.model_source import adapter_dir, loadable_dir, resolve
from sllm.backends.sampling_defaults import from_generation_config
from sllm.backends.static_batching import BASE_ADAPTER, RawLogprob, StaticBatcher, raw_logprob
from sllm.backends.structured import Grammars, RowGrammar
from sllm.backends.transformers_knobs import (
    CPU_KV_CACHE_TOKENS,
    CPU_KV_PAGE_TOKENS,
    CPU_MAX_BATCH_TOKENS,
    TransformersKnobs,
)
from sllm.edge.errors import RequestError
from sllm.edge.protocol import ChatMessage, Prompt
from sllm.store.catalog import load_pretrained

log = logging.getLogger(__name__)

# Per-request temperature divides the logits: 0 (greedy in OpenAI's API) becomes this.
_GREEDY_TEMPERATURE = 1e-5


class TransformersEngine:
    """One model in this process: generation through transformers' continuous batching,
    or embeddings for an encoder."""

    def __init__(
        self,
        knobs: TransformersKnobs,
        cache: Path,
        lora_adapters: dict[str, str] | None = None,
        while_waiting: Callable[[], None] | None = None,
    ) -> None:
        self.knobs = knobs
        self._while_waiting = while_waiting  # while the worker stores the model: ``locked``
        self.lora_adapters = dict(lora_adapters or {})
        self.adapters = frozenset(self.lora_adapters)
        self.cache = cache
        files = resolve(knobs.pretrained_model_name_or_path, cache)
        self.path = loadable_dir(files, cache, self._while_waiting)
        self.device = device_of(knobs)
        self.generative = is_generative(self.path, knobs)
        if self.adapters and not self.generative:
            raise ValueError("LoRA adapters are served for generative models only")
        if self.adapters and knobs.batching == "continuous":
            raise ValueError(
                "LoRA adapters need batching 'static' (or 'auto'): continuous batching "
                "cannot mix adapters in one batch"
            )
        self._ids = itertools.count()
        # The model's generation config's sampling, for requests that set none.
        self.sampling_defaults: dict[str, float] = {}
        self.manager: Any = None
        self.batcher: StaticBatcher | None = None
        # Under continuous batching: the static batcher for requests it cannot sample
        # (``_rows_only``), started on the first such request.
        self.side: StaticBatcher | None = None
        self._continuous_top_k = False
        if self.generative:
            self._load_generator()
        else:
            self._load_encoder()

    # -- loading ----------------------------------------------------------------------

    def _load_generator(self) -> None:
        from transformers import AutoModelForCausalLM

        # from_pretrained through sllm's store: stored once, then loaded from that copy.
        model = load_pretrained(
            AutoModelForCausalLM,
            self.path,
            self.cache,
            self.device,
            dtype=dtype_of(self.knobs, self.device),
            trust_remote_code=self.knobs.trust_remote_code,
            source=self.knobs.pretrained_model_name_or_path,
            while_waiting=self._while_waiting,
            # Several GPUs (num_gpus > 1, all the worker let us see): layers spread over them.
            device_map="auto" if gpu_count(self.device) > 1 else None,
        )
        if gpu_count(self.device) <= 1:
            model.to(self.device)  # type: ignore[arg-type]  # transformers types .to oddly
        model.eval()
        self.context_length = int(getattr(model.config, "max_position_embeddings", None) or 2048)
        self.sampling_defaults = from_generation_config(model.generation_config.to_diff_dict())
        self.vocab_size = int(model.config.vocab_size)
        self.model = self._with_adapters(model) if self.adapters else model
        static = self.knobs.batching == "static" or bool(self.adapters)
        failed: Exception | None = None
        if not static:
            # Started before the tokenizer loads: its thread allocates the KV cache
            # (zeroing memory, without the GIL) while the tokenizer's parse holds the
            # GIL here; 0.05-0.1 s off each start of the demo model on the 2-core VM.
            try:
                self._start_continuous(model.generation_config.eos_token_id)
            except Exception as exc:
                failed = exc
        try:
            self._load_tokenizer(model)
        except BaseException:
            self._stop_continuous()  # its thread would keep the failed start alive
            raise
        eos = model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.grammars = Grammars(self.tokenizer, self.vocab_size, self.eos_ids)
        self.pad_id = int(self.tokenizer.pad_token_id or next(iter(self.eos_ids), 0))
        if not static and failed is None:
            try:
                self._warm_up()
            except Exception as exc:
                failed = exc
        if failed is not None:
            self._stop_continuous()
            if self.knobs.batching == "continuous":
                raise failed
            log.warning("continuous batching failed to start (%s): using static batching", failed)
            static = True
        if static:
            self.batcher = self._static_batcher()
            self._warm_up_static()

    def _static_batcher(self) -> StaticBatcher:
        batcher = StaticBatcher(
            self.model,
            self.device,
            self.pad_id,
            self.eos_ids,
            self.knobs.max_batch_size,
            adapters=bool(self.adapters),
        )
        batcher.start()
        return batcher

    def _load_tokenizer(self, model: Any) -> None:
        """From where the weights came: the stored copy (checked with them, its config
        made quicker to load: ``sllm.store.tokenizer_config``), or the source where
        transformers loaded the model itself. After the weights, not in a thread beside
        them: the tokenizers library's parse holds the GIL, and the two taking turns
        made the demo model's start 0.07-0.26 s slower on the 2-core VM."""
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(
            model.name_or_path or self.path, trust_remote_code=self.knobs.trust_remote_code
        )

    def _with_adapters(self, model: Any) -> Any:
        """The model wrapped by peft with every adapter loaded, once, for all requests."""
        from peft import PeftModel

        started = time.monotonic()
        (first, source), *rest = self.lora_adapters.items()
        peft_model = PeftModel.from_pretrained(
            model, str(adapter_dir(source, self.cache)), adapter_name=first
        )
        for name, source in rest:
            peft_model.load_adapter(str(adapter_dir(source, self.cache)), adapter_name=name)
        peft_model.eval()
        log.info(
            "loaded LoRA adapters %s in %.1f s",
            ", ".join(self.lora_adapters),
            time.monotonic() - started,
        )
        return peft_model

    def _start_continuous(self, eos: int | list[int] | None) -> None:
        """``eos``: the model's own end tokens, the manager's default; each request
        names its own (``eos_ids``, which the tokenizer may add to)."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        # Non-default temperature and top_p make transformers build the processors
        # that each request then sets for itself. Top-k's sorts every row's logits at
        # every step (17 ms for 8 rows of SmolLM2's vocabulary on the 2-core VM): it is
        # built only for a model whose own defaults set top_k; for the others a request
        # with top_k takes the static batcher.
        self._continuous_top_k = "top_k" in self.sampling_defaults
        generation = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_p=0.95,
            top_k=self.vocab_size if self._continuous_top_k else None,
            max_new_tokens=self.knobs.default_max_tokens,
            eos_token_id=eos,
        )
        cb = ContinuousBatchingConfig(per_request_processors=True)
        cpu = self.device == "cpu"
        batch_tokens = self.knobs.max_batch_tokens or (CPU_MAX_BATCH_TOKENS if cpu else None)
        if batch_tokens:
            cb.max_batch_tokens = batch_tokens
        page = self.knobs.kv_page_tokens or (CPU_KV_PAGE_TOKENS if cpu else None)
        if page:
            cb.page_size = page
        cache_tokens = self.knobs.kv_cache_tokens or (CPU_KV_CACHE_TOKENS if cpu else None)
        if cache_tokens:
            cb.num_blocks = -(-cache_tokens // cb.page_size)
        self.manager = self.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=cb
        )
        self.manager.start()

    def _eos_list(self) -> list[int] | None:
        return sorted(self.eos_ids) or None  # None: the manager's default

    def _stop_continuous(self) -> None:
        if self.manager is not None:
            self.manager.stop(block=True, timeout=10)
            self.manager = None

    def _warm_up(self) -> None:
        """One short generation before /health answers: the first request through the
        batching manager pays several seconds of one-time set-up (5.6 s for SmolLM2 on
        this CPU), which belongs to the cold start, not to a user's first token. One
        token (the prefill): a second, decoded, added 0.07-0.19 s to each start and
        took nothing off the first request's tokens, cold or from a warm process."""
        started = time.monotonic()
        request_id = self.manager.add_request(
            self._encode("Hello"),
            max_new_tokens=1,
            eos_token_id=self._eos_list(),
            temperature=1.0,
            top_p=1.0,
        )
        if request_id is None:
            raise RuntimeError("the continuous-batching manager refused the warm-up request")
        for out in self.manager.request_id_iter(request_id):
            if out.error:
                raise RuntimeError(f"warm-up generation failed: {out.error}")
        log.info("warmed up in %.2f s", time.monotonic() - started)

    def _warm_up_static(self) -> None:
        """A first batch before /health answers, for the same reason as ``_warm_up``;
        with adapters it runs a mixed batch, so a broken adapter fails the start."""
        assert self.batcher is not None
        batcher = self.batcher
        started = time.monotonic()
        names: list[str | None] = [None, *sorted(self.adapters)]

        async def one(adapter: str | None) -> None:
            params = SamplingParams(max_tokens=2, temperature=0, adapter=adapter)
            async for _ in batcher.tokens(self._encode("Hello"), params):
                pass

        async def all_of_them() -> None:
            await asyncio.wait_for(asyncio.gather(*(one(a) for a in names)), timeout=600)

        asyncio.run(all_of_them())
        log.info("warmed up in %.2f s", time.monotonic() - started)

    def _load_encoder(self) -> None:
        from transformers import AutoModel

        model = load_pretrained(
            AutoModel,
            self.path,
            self.cache,
            self.device,
            dtype=dtype_of(self.knobs, self.device),
            trust_remote_code=self.knobs.trust_remote_code,
            source=self.knobs.pretrained_model_name_or_path,
            while_waiting=self._while_waiting,
        ).to(self.device)
        model.eval()
        self.model = model
        self._load_tokenizer(model)
        self.pooling, self.normalize = sentence_transformers_pooling(self.path)
        # Tokenizers without a limit report a huge model_max_length; the positions bound it.
        self.context_length = min(
            int(getattr(self.tokenizer, "model_max_length", 512) or 512),
            int(getattr(model.config, "max_position_embeddings", 512) or 512),
        )

    def close(self) -> None:
        self._stop_continuous()
        for batcher in (self.batcher, self.side):
            if batcher is not None:
                batcher.stop(timeout=10)

    # -- Engine -----------------------------------------------------------------------

    def chat_prompt(
        self, messages: list[ChatMessage], tools: list[dict[str, Any]] | None = None
    ) -> str:
        self._need(generative=True)
        template = getattr(self.tokenizer, "chat_template", None)
        turns, tools = tool_calls.template_input(messages, tools, template and str(template))
        rendered = self.tokenizer.apply_chat_template(
            turns,
            tools=cast(Any, tools),
            tokenize=False,
            add_generation_prompt=True,
        )
        return str(rendered)

    def must_call(self, messages: list[ChatMessage]) -> bool:
        return False

    def continuation_prompt(self, prompt: str, produced: str) -> str:
        # The chat template already opened the assistant's turn: the partial answer
        # goes straight after it, as continue_final_message would render it.
        return prompt + produced

    def count_tokens(self, prompt: Prompt) -> int:
        return len(prompt) if isinstance(prompt, list) else len(self._encode(prompt))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(self._known(ids, "prompt")))

    def _known(self, ids: list[int], param: str) -> list[int]:
        """``ids``, once each is in the vocabulary: the tokenizer's, and the model's
        embeddings (a tokenizer may list tokens past them)."""
        size = min(len(self.tokenizer), int(getattr(self.model.config, "vocab_size", 0) or 1 << 62))
        return known_ids(ids, size, param)

    def default_max_tokens(self, prompt_tokens: int) -> int:
        return default_limit(self.knobs.default_max_tokens, self.context_length, prompt_tokens)

    def check(self, prompt_tokens: int, params: SamplingParams) -> None:
        self._need(generative=True)
        check_context(prompt_tokens, params.max_tokens, self.context_length)
        if params.json_schema is not None:
            self.grammars.check(params.json_schema)

    def _rows_only(self, params: SamplingParams) -> bool:
        """Whether a request needs the static batcher's per-row sampling: continuous
        batching draws every request from one generator and applies only temperature,
        top_p and (``_start_continuous``) top_k."""
        sampled = params.temperature is None or params.temperature > 0
        return bool(
            (params.seed is not None and sampled)
            or params.presence_penalty
            or params.frequency_penalty
            or params.min_p
            or params.repetition_penalty not in (None, 1.0)
            or params.min_tokens
            # The manager's log-probability is the sampled token's after temperature,
            # top_k and top_p, without alternatives.
            or params.logprobs is not None
            or params.json_schema is not None
            or (params.top_k and params.top_k > 0 and not self._continuous_top_k)
        )

    async def generate(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Piece]:
        ids = self._known(prompt, "prompt") if isinstance(prompt, list) else self._encode(prompt)
        tokens: AsyncGenerator[tuple[int, RawLogprob | None], None]
        grammar = None
        if params.json_schema is not None:
            # In a thread: the grammar engine's first use takes in the vocabulary.
            grammar = await asyncio.to_thread(self._row_grammar, params.json_schema)
        if self.batcher is not None:
            tokens = self.batcher.tokens(ids, params, grammar)
        elif self._rows_only(params):
            if self.side is None:
                self.side = self._static_batcher()
            tokens = self.side.tokens(ids, params, grammar)
        else:
            tokens = self._continuous_tokens(ids, params)
        decoder = IncrementalDecoder(self.tokenizer)
        try:
            async for token, raw in tokens:
                if token in self.eos_ids and not params.ignore_eos:
                    return
                yield Piece(decoder.push(token), None if raw is None else self._logprob(token, raw))
            # A character left incomplete by the last token would only decode to U+FFFD.
        finally:
            await tokens.aclose()

    def _row_grammar(self, schema: dict[str, Any]) -> RowGrammar:
        return RowGrammar(self.grammars.matcher(self.grammars.check(schema)), self.vocab_size)

    def _logprob(self, token: int, raw: RawLogprob) -> TokenLogprob:
        """A token's log-probability with its text, as vLLM shows it: each token decoded
        alone."""
        lp, top = raw
        text = self._token_text
        return TokenLogprob(text(token), lp, tuple((text(i), v) for i, v in top))

    def _token_text(self, token: int) -> str:
        return str(self.tokenizer.decode([token]))

    async def prompt_logprobs(
        self, prompt: Prompt, top: int, adapter: str | None
    ) -> list[TokenLogprob]:
        ids = self._known(prompt, "prompt") if isinstance(prompt, list) else self._encode(prompt)
        if not ids:
            return []
        raws = await asyncio.to_thread(self._prompt_logprobs_sync, ids, top, adapter)
        first = TokenLogprob(self._token_text(ids[0]), None)
        return [first, *(self._logprob(t, r) for t, r in zip(ids[1:], raws, strict=True))]

    def _prompt_logprobs_sync(
        self, ids: list[int], top: int, adapter: str | None
    ) -> list[RawLogprob]:
        """One forward pass over the prompt: the logits at each place give the next token's."""
        import torch

        kwargs: dict[str, Any] = {}
        if self.adapters:
            kwargs["adapter_names"] = [adapter or BASE_ADAPTER]
        with torch.inference_mode():
            logits = self.model(torch.tensor([ids], device=self.device), **kwargs).logits[0]
        return [raw_logprob(logits[i], ids[i + 1], top) for i in range(len(ids) - 1)]

    async def _continuous_tokens(
        self, ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[tuple[int, None], None]:
        request_id = f"r{next(self._ids)}"
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        self.manager.register_result_handler(request_id, outputs.put_nowait)
        temperature = 1.0 if params.temperature is None else params.temperature
        kwargs: dict[str, Any] = {
            "temperature": max(temperature, _GREEDY_TEMPERATURE),
            "top_p": 1.0 if params.top_p is None else params.top_p,
        }
        if self._continuous_top_k:
            # The vocabulary's size keeps every token.
            top_k = params.top_k if params.top_k and params.top_k > 0 else self.vocab_size
            kwargs["top_k"] = min(top_k, self.vocab_size)
        self.manager.add_request(
            ids,
            request_id=request_id,
            max_new_tokens=params.max_tokens,
            streaming=True,
            # -1: no token ends it (the manager's default is its own end tokens).
            eos_token_id=-1 if params.ignore_eos else self._eos_list(),
            **kwargs,
        )
        seen = 0
        finished = False
        try:
            while not finished:
                out = await outputs.get()
                if out.error:
                    raise RuntimeError(f"generation failed: {out.error}")
                finished = out.is_finished()
                for token in out.generated_tokens[seen:]:
                    yield int(token), None
                seen = len(out.generated_tokens)
        finally:
            if not finished:
                # The client went away or a stop string matched: free the sequence.
                self.manager.cancel_request(request_id)

    async def embed(
        self, texts: list[Prompt], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        self._need(generative=False)
        for text in texts:
            if isinstance(text, list):
                self._known(text, "input")
        pooling = (self.pooling, self.normalize)
        return await asyncio.to_thread(
            embed_batch, self.model, self.tokenizer, self.device, self.context_length,
            pooling, texts, dimensions,
        )  # fmt: skip

    # -- helpers ----------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        # Chat templates already carry the special tokens the model expects.
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _need(self, *, generative: bool) -> None:
        if generative and not self.generative:
            raise RequestError("this is an embedding model: use /v1/embeddings", param="model")
        if not generative and self.generative:
            raise RequestError(
                "this model generates text; deploy an embedding model for /v1/embeddings",
                param="model",
            )
