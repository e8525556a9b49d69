"""Every random choice derives from (run seed, purpose, round, client) -- nothing else.

``numpy.random.SeedSequence([seed, purpose, *keys])`` gives statistically independent
streams for each purpose. Because a round's randomness is a function of (seed, round),
a resumed run, a run on another machine and every torchrun rank draw the same client
sample, mutants and local shuffles without saving or broadcasting generator states.
"""

from __future__ import annotations

import numpy as np

INIT, PARTITION, SAMPLE, ALGORITHM, CLIENT = range(5)


def derive_seed(seed: int, purpose: int, *keys: int) -> int:
    """A 63-bit seed (valid for ``torch.manual_seed``) for one purpose."""
    state = np.random.SeedSequence([int(seed), int(purpose), *map(int, keys)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def derive_rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(purpose), *map(int, keys)]))
