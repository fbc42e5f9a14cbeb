"""The pip command that installs some of sllm's extras here, for hints that must name a
command that works: sllm is installed from its repository (an editable install, as the
README has it), so the command names that checkout and this interpreter's pip."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import sllm


def pip_install(*extras: str) -> str:
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    wanted = ",".join(extras)
    checkout = Path(sllm.__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        return f"{pip} -e {shlex.quote(f'{checkout}[{wanted}]')}"
    return f"{pip} {shlex.quote(f'sllm[{wanted}]')}"  # a wheel, should one be published
