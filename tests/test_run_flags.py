"""RunConfig.from_flags: one table of flatfl train's config flags, shared by the command line and Flower."""

from __future__ import annotations

import pytest

from flatfl.cli import build_parser
from flatfl.cli.train import config_flags
from flatfl.config import RunConfig
from flatfl.errors import UserError
from flatfl.run_flags import CONFIG_FLAGS, parse_flags

RUNTIME = {"download", "out", "resume", "overwrite", "save_every", "save_rounds", "clients_dtype", "tensorboard",
           "device", "parallel_clients", "progress", "threads", "help"}  # fmt: skip


def test_every_train_flag_is_a_config_flag_or_a_runtime_one():
    """A flag declared for the parser but missing from run_flags' table (or the reverse) would be dropped silently."""
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    assert dests - RUNTIME == set(CONFIG_FLAGS) and not (set(CONFIG_FLAGS) & RUNTIME)


def test_text_and_typed_values_give_one_config():
    """The command line's text and a Flower config's numbers and booleans are checked as the same text."""
    argv = ["train", "--algo", "fedmut", "--radius", "2.5", "--clients", "12", "--frac", "0.5", "--unweighted",
            "--batch-size", "full", "--save-clients", "--seed", "7", "--mutation-cap", "1e-3"]  # fmt: skip
    cli = RunConfig.from_flags(config_flags(vars(build_parser().parse_args(argv))))
    typed = {"algo": "fedmut", "radius": 2.5, "clients": 12, "frac": 0.5, "weighted": False, "batch-size": "full",
             "save-clients": True, "seed": 7, "mutation_cap": 0.001}  # fmt: skip
    assert RunConfig.from_flags(typed) == cli
    assert (cli.algo_config.radius, cli.data.num_clients, cli.local.batch_size) == (2.5, 12, "full")
    assert (cli.save_clients, cli.algo_config.weighted, cli.algo_config.mutation_cap) == (1, False, 0.001)
    assert cli.identity() == RunConfig.from_flags(parse_flags(typed)).identity()  # parsing twice changes nothing


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"rounds": True}, "--rounds: expected a number of rounds from 1 to 1,000,000, got 'True'"),
        ({"clients": 2.0}, "--clients: expected a number of clients from 1 to 1,000,000, got '2.0'"),
        ({"augment": "yes"}, "--augment: expected true or false, got 'yes'"),
        ({"algo": "fedsgd"}, "--algo: invalid choice 'fedsgd' (choose from fedavg, fedmut, "),
        ({"num_clients": 3}, "--num-clients: not a flag of a run's config"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(flags, message):
    with pytest.raises(UserError) as exc:
        RunConfig.from_flags(flags)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
