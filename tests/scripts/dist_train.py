"""Run several ``flatfl`` commands in one torchrun job (one process group for all of them).

    python -m torch.distributed.run --nproc_per_node=2 tests/scripts/dist_train.py '[["train", ...], ...]'

Used by tests/test_distributed.py: starting torchrun once instead of once per algorithm keeps the
test short. Exits non-zero if any command does.
"""

import json
import sys

import torch.distributed as dist

from flatfl.cli import main

dist.init_process_group("gloo")
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code != 0:
        sys.exit(code)
dist.barrier()  # nobody tears the group down while a peer still uses it
dist.destroy_process_group()
