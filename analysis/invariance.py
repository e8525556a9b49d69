"""Which flatness measure is unchanged by which function-preserving reparametrisation.

A ReLU network computes the same function after some rescalings of its weights, yet many
flatness measures change under them (Dinh, Pascanu, Bengio & Bengio, ICML 2017). The
reparametrisations flatfl tests each measure against (``tests/test_invariance.py``):

* ``layer``: (W_l, b_l) -> alpha (W_l, b_l) and W_{l+1} -> W_{l+1} / alpha in a ReLU network
  without BatchNorm (positive homogeneity of ReLU);
* ``filter``: one hidden unit's incoming weights and bias times alpha, its outgoing weights
  divided by alpha (the neuron-wise version of the same symmetry);
* ``bn_filter``: one convolution filter (and its bias) times alpha in front of a BatchNorm in
  eval mode whose running mean is scaled by alpha and running variance by alpha^2.

:data:`INVARIANT_TO` maps a verdict measure's key (as in ``flatfl report``'s verdict table; the
1D widths share the key ``width``) to the set of reparametrisations under which the test
found it unchanged (to its stated tolerance, with the same directions and seeds). It is the
single source the report's caution sentence and docs/landscapes.md's table are built from;
the test fails when a row here disagrees with what the measure does on a real reparametrised
model.
"""

from __future__ import annotations

REPARAMETRISATIONS: dict[str, str] = {
    "layer": "layer-wise rescaling (W_l, b_l)·α, W_{l+1}/α (ReLU, no BatchNorm)",
    "filter": "filter-wise rescaling: one unit's incoming weights ·α, outgoing /α",
    "bn_filter": "a convolution filter ·α before BatchNorm (eval mode, running statistics scaled)",
}

# measure key -> reparametrisations it is invariant to (verified by tests/test_invariance.py)
INVARIANT_TO: dict[str, frozenset[str]] = {
    "lambda_max": frozenset(),
    "trace": frozenset(),
    "sharpness_sam": frozenset(),
    "sharpness_epsilon": frozenset(),
    "sharpness_average_isotropic": frozenset(),
    "sharpness_adaptive_l2": frozenset({"layer", "filter", "bn_filter"}),
    "sharpness_adaptive_linf": frozenset({"layer", "filter", "bn_filter"}),
    "sharpness_average_adaptive": frozenset({"layer", "filter", "bn_filter"}),
    "width": frozenset({"layer", "bn_filter"}),
}


def invariant_to(key: str) -> frozenset[str]:
    """The reparametrisations measure ``key`` is invariant to (``width_0.1`` etc. read ``width``);
    an unknown key is invariant to nothing."""
    if key.startswith("width_"):
        key = "width"
    return INVARIANT_TO.get(key, frozenset())
