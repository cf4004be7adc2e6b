"""`${NAME}` placeholders in tool settings, filled from the environment when tools are built."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from moksori.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise ConfigError(f"{where} uses ${{{name}}}, but the environment variable {name} is not set")
        return env[name]

    return _VAR.sub(sub, value)


def expand_all(values: Mapping[str, str], where: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    return {k: expand(v, f"{where}.{k}", environ) for k, v in values.items()}
