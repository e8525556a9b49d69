"""A Flower app's run config (``[tool.flwr.app.config]``, ``flwr run --run-config``) read as the
flags of ``flatfl train``: the same names (``radius``, ``mut-acc-rate``, ``num-clients``, ...), the
same types, checks and defaults, because they go through flatfl's own train parser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flatfl.config import RunConfig
from flatfl.errors import UserError

# Flower-side keys that are not flatfl train flags (read by the ServerApp itself)
APP_KEYS = ("out", "overwrite", "resume")
# Flower templates' names for flatfl train flags
ALIASES = {"num-server-rounds": "rounds"}


def switch(user_config: Mapping[str, Any], key: str) -> bool:
    """A true/false key of the run config (``overwrite``, ``resume``): a boolean, or the string true/false;
    anything else is refused in one line (the string "False" must not mean yes)."""
    value = user_config.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"Flower run config: {key} = {value!r}; give true or false")


def train_argv(user_config: Mapping[str, Any]) -> list[str]:
    """``flatfl train`` arguments from a Flower run config: ``key = value`` -> ``--key value``;
    ``key = true`` -> ``--key`` (a switch), ``false`` -> left out; ``num-server-rounds`` (Flower's
    templates) is ``rounds``."""
    if all(k in user_config for k in ("rounds", *ALIASES)):
        raise UserError("Flower run config: both rounds and num-server-rounds; give one")
    argv: list[str] = []
    for key, value in user_config.items():
        if key in APP_KEYS:
            continue
        key = ALIASES.get(key, key)
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def run_config(user_config: Mapping[str, Any]) -> RunConfig:
    """The RunConfig ``flatfl train`` would build from the same flags (one-line UserError on a bad key)."""
    from flatfl.cli import build_parser
    from flatfl.cli.train import config_from_args

    argv = train_argv(user_config)
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]

    def fail(message: str) -> None:
        raise UserError(f"Flower run config: {message} (keys are flatfl train's flags without the dashes)")

    train.error = fail  # type: ignore[method-assign]
    try:
        ns: dict[str, Any] = vars(train.parse_args(argv))
    except SystemExit as exc:  # --help and the like have no place in a run config
        raise UserError(f"Flower run config: {' '.join(argv)} is not a valid flatfl train command") from exc
    ns.pop("threads", None)
    return config_from_args(ns)
