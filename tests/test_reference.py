"""Regression: the reference runs in checkpoints/reference/ and their expected flatness numbers.

A change in the trainer (retrained runs differ from the stored checkpoints) or in the analysis
(lambda_max, trace, sharpness, spread or the surface move beyond their stated tolerances) fails
here. Intended changes: regenerate with ``python checkpoints/reference/make_reference.py``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flatfl import checkpoint as ckpt

REF = Path(__file__).resolve().parent.parent / "checkpoints" / "reference"


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("make_reference", REF / "make_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["digits-fedavg", "digits-fedmut"])
def test_trainer_reproduces_the_reference_run(reference, tmp_path, name):
    out = tmp_path / name
    reference.train(out, reference.RUNS[name])
    stored = REF / name
    assert ckpt.read_run_json(out)["config"] == ckpt.read_run_json(stored)["config"]
    for r in range(reference.ROUND + 1):
        a, _ = ckpt.load_round(ckpt.round_path(out, r))
        b, _ = ckpt.load_round(ckpt.round_path(stored, r))
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name} round {r} {k}")
    saved = sorted(p.name for p in stored.glob("clients_*"))
    assert (
        sorted(p.name for p in out.glob("clients_*"))
        == saved
        == ["clients_0001.safetensors", "clients_0005.safetensors"]
    )


@pytest.mark.parametrize("name", ["digits-fedavg", "digits-fedmut"])
def test_analysis_reproduces_the_expected_numbers(reference, tmp_path, name):
    expected = json.loads((REF / "expected.json").read_text())
    assert expected["tolerances"] == reference.TOL
    got = reference.measure(REF / name, tmp_path / "work")
    want = expected["runs"][name]
    for key, tol in reference.TOL.items():
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=tol, atol=1e-7, err_msg=key)
    if name == "digits-fedavg":
        assert want["sent_l2_mean"] == 0.0  # FedAvg sends the global model itself
    else:
        assert want["sent_l2_mean"] > 0.1
