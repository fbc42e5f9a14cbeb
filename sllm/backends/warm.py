"""A warm backend process: ``python -m sllm.backends.warm MODULE[:FUNCTION] ...``.

It imports each module and calls each function (``Backend.warm_prime``: torch,
transformers, the backend server, and what they set up once per process), writes
``ready`` on stdout, and waits for the one instance it will become: a JSON line on
stdin, ``{"argv": [...], "env": {...}, "log": "..."}``, where ``argv`` is the
backend's command after the interpreter (``-m MODULE FLAGS...``). It then takes the
instance's environment and log file and runs the module as ``__main__``, as a fresh
``python -m`` would. End of input (the worker closed its pool) ends it quietly.

Variables a library reads when it is imported (``OMP_NUM_THREADS``) come from the
worker's environment, which the pool was started with; the instance's own variables
(``CUDA_VISIBLE_DEVICES``, read when CUDA first initializes) apply.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
from typing import Any


def _prime(specs: list[str]) -> None:
    for spec in specs:
        module, _, function = spec.partition(":")
        loaded = importlib.import_module(module)
        if function:
            getattr(loaded, function)()


def _order(line: str) -> tuple[str, list[str], dict[str, str], str]:
    """(module, its arguments, environment, log path) from the worker's line."""
    order: Any = json.loads(line)
    argv, env, log = order["argv"], order["env"], order["log"]
    if not (
        isinstance(argv, list)
        and len(argv) >= 2
        and argv[0] == "-m"
        and all(isinstance(a, str) for a in argv)
    ):
        raise ValueError("argv must be ['-m', MODULE, ...] of strings")
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise ValueError("env must map names to strings")
    if not isinstance(log, str):
        raise ValueError("log must be a path")
    return argv[1], argv[2:], env, log


def main(specs: list[str]) -> None:
    _prime(specs)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        return
    try:
        module, args, env, log = _order(line)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"sllm warm process: bad instance order: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # The instance's streams, as the cold path gives them: its log, and no input. The
    # worker's pipes close here, so it sees the process exit as soon as it does.
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
