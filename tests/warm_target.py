"""A module a warm process is told to run in tests: it writes what it was given."""

from __future__ import annotations

import json
import os
import sys
import time


def slow_prime() -> None:
    """A prime that takes a while, as importing torch does."""
    time.sleep(1.5)


if __name__ == "__main__":
    out = sys.argv[sys.argv.index("--out") + 1]
    print("to the log")  # stdout: the instance's log
    with open(out, "w") as f:
        json.dump(
            {
                "argv": sys.argv[1:],
                "mark": os.environ.get("SLLM_TEST_MARK"),
                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "stdin": sys.stdin.read(),
                "name": __name__,
            },
            f,
        )
