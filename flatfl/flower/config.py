"""A Flower app's run config (``[tool.flwr.app.config]``, ``flwr run --run-config``) read as the
flags of ``flatfl train``: the same names without dashes (``radius``, ``mut-acc-rate``, ``clients``,
...), the same checks and defaults, because the mapping goes to :meth:`RunConfig.from_flags`, where
``flatfl train`` builds its config too. Nothing here parses argv."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flatfl.config import RunConfig
from flatfl.errors import UserError

# Flower-side keys that are not flatfl train flags (read by the ServerApp itself)
APP_KEYS = ("out", "overwrite", "resume")
# Flower templates' names for flatfl train flags
ALIASES = {"num-server-rounds": "rounds"}
PREFIX = "Flower run config: "


def switch(user_config: Mapping[str, Any], key: str) -> bool:
    """A true/false key of the run config (``overwrite``, ``resume``): a boolean, or the string true/false;
    anything else is refused in one line (the string "False" must not mean yes)."""
    value = user_config.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"{PREFIX}{key} = {value!r}; give true or false")


def train_flags(user_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``flatfl train`` flags of a Flower run config: every key but ``APP_KEYS``, with Flower's
    ``num-server-rounds`` read as ``rounds``."""
    if all(k in user_config for k in ("rounds", *ALIASES)):
        raise UserError(f"{PREFIX}both rounds and num-server-rounds; give one")
    return {ALIASES.get(k, k): v for k, v in user_config.items() if k not in APP_KEYS}


def run_config(user_config: Mapping[str, Any]) -> RunConfig:
    """The RunConfig ``flatfl train`` builds from the same flags; a bad key or value is the one-line
    UserError ``flatfl train`` gives, prefixed with ``Flower run config:``."""
    flags = train_flags(user_config)  # its errors carry the prefix already
    try:
        return RunConfig.from_flags(flags)
    except UserError as exc:
        raise UserError(f"{PREFIX}{exc}") from None
