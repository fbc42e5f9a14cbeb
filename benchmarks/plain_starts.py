"""Models started the plain way, in a fresh ``python -c``, for ``cold_start.py`` to
measure sllm's starts against: the whole process's wall time, interpreter and imports
included, to one generated token."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def _timed(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def plain_transformers(path: Path) -> float:
    """A fresh interpreter loading the model with transformers and generating one
    token: wall time of the whole process."""
    code = (
        "import torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(path)!r})\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(path)!r})\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'Say hello.'}],"
        " add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "model.generate(**ids, max_new_tokens=1, do_sample=False)\n"
    )
    return _timed(code)


def plain_onnx(path: Path) -> float:
    """A fresh interpreter loading a converted model with ONNX Runtime GenAI and
    generating one token."""
    code = (
        "import json\n"
        "import onnxruntime_genai as og\n"
        f"model = og.Model({str(path)!r})\n"
        "tok = og.Tokenizer(model)\n"
        "prompt = tok.apply_chat_template(json.dumps([{'role': 'user', 'content': 'Say hello.'}]),"
        " add_generation_prompt=True)\n"
        "params = og.GeneratorParams(model)\n"
        "params.set_search_options(max_length=4096, do_sample=False)\n"
        "gen = og.Generator(model, params)\n"
        "gen.append_tokens(tok.encode(prompt))\n"
        "gen.generate_next_token()\n"
    )
    return _timed(code)
