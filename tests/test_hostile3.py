"""Issue #27's final hostile pass over the command line (session 12, helper hostile3): each test is a case the
pass found ending in a traceback, or accepted silently, on main as of b9e3f1e."""

from __future__ import annotations

import pytest

from tests.conftest import TINY
from tests.test_cli import _one_line_error

FEDGEN = ["--algo", "fedgen", "--gen-epochs", "1", "--gen-iters", "1", "--gen-batch", "8", "--gen-hidden", "8"]


@pytest.mark.parametrize("flag", ["--gen-batch", "--gen-hidden", "--gen-noise"])
@pytest.mark.parametrize("value", [str(2**70), "1000001"])
def test_fedgen_sizes_beyond_a_tensor_dimension_are_one_line(cli, tmp_path, flag, value):
    """2**70 ended in torch's 'Overflow when unpacking long long' traceback after round 0 was written."""
    out = tmp_path / "run"
    code, _, err = cli("train", *TINY, *FEDGEN, "--rounds", "1", "--out", out, flag, value)
    _one_line_error(code, err, flag, value, "1,000,000")
    assert not out.exists()
