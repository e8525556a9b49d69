"""Which flatness measure is unchanged by which function-preserving reparametrisation.

A ReLU network computes the same function after some rescalings of its weights, yet many
flatness measures change under them (Dinh, Pascanu, Bengio & Bengio, ICML 2017). The
reparametrisations flatfl tests each measure against (``tests/test_invariance.py``, on the models
and with the settings of ``bench/invariance_table.py``):

* ``layer``: (W_l, b_l) -> alpha (W_l, b_l) and W_{l+1} -> W_{l+1} / alpha in a ReLU network
  without BatchNorm (positive homogeneity of ReLU);
* ``filter``: one hidden unit's incoming weights and bias times alpha, its outgoing weights
  divided by alpha (the neuron-wise version of the same symmetry);
* ``bn_filter``: one convolution filter (and its bias) times alpha in front of a BatchNorm in
  eval mode whose running mean is scaled by alpha and running variance by alpha^2;
* ``penultimate_layer``: the feature layer (W_{L-1}, b_{L-1}) times alpha and the output layer's W_L divided by
  alpha -- the layer-wise rescaling that reaches the output layer, the one relative flatness (Petzka et al.
  2021) is built to be invariant to (the three above leave the output layer and the features alone);
* ``penultimate_neuron``: one feature neuron's incoming weights and bias times alpha, its column of W_L divided
  by alpha (the neuron-wise version at the output layer).

Every rescaling scales the biases of the units it scales: without that it would not preserve the function.

:data:`INVARIANT_TO` maps a verdict measure's key (as in ``flatfl report``'s verdict table; the
1D widths share the key ``width``) to the set of reparametrisations under which the test
found it unchanged. It is the single source the report's caution sentence and
docs/landscapes.md's table (:func:`markdown_table`) are built from; the test fails when a row here
disagrees with what the measure does on a real reparametrised model.

**How it is decided.** Each measure is computed by the report's own code (``flatfl.runs.measure``,
``measure_slices``, ``checkpoint_row``) with the report's default settings (all six sharpness measures, GGN and
empirical-Fisher curvature, relative flatness, the Fisher-Rao norm), in float64, and the same seeds -- the same
Lanczos start, trace probes, sharpness draws and slice directions -- on a trained model and on its reparametrised
copy, for alpha = 0.25 and 3. *Invariant*: equal to 1e-9 relative for both alphas (measured: at most 6.9e-14, rounding).
*Changes*: beyond 1e-9 for both alphas and by more than 1e-3 for at least one (measured: 1.5e-5 -- epsilon-sharpness
under ``penultimate_neuron`` at alpha = 3, where it moves by 13 % at alpha = 0.25 -- to 10x). A measure in between
fails the test rather than being classified. In float32 (the report's default dtype) the invariant measures
agree to float32's rounding instead: at most 3.2e-5 relative (average adaptive sharpness, a small
difference of two losses; ``python bench/invariance_table.py --dtype float32``).

**Why, and the details the result depends on.** Each reparametrisation multiplies every parameter by
a positive constant, w -> T w (T diagonal), and is a symmetry of the loss at *every* point,
L(T v) = L(v) for all v, not only at the trained weights.

* Adaptive sharpness (L2, Linf) and average adaptive sharpness perturb by delta = |w| * u
  elementwise, and |T w| = T |w|, so L(T w + |T w| u) = L(T (w + |w| u)) = L(w + |w| u): the loss as
  a function of u is the same, so are the ascent's gradients in u (and their signs, for Linf), its
  iterates and the Monte Carlo draws -- whatever the number of steps. Invariant to all three.
  With BatchNorm this needs ``eps = 0``: (alpha z - alpha mu) / sqrt(alpha^2 var + eps) is not
  (z - mu) / sqrt(var + eps), so with eps > 0 the *function* changes. With PyTorch's eps = 1e-5 the
  test model's outputs move by 6e-6 (relative) under alpha = 3 and adaptive sharpness by 3e-5: the
  invariance then holds to about eps / var, not to rounding.
* The 1D widths (Li et al. 2018) read slices along directions normalised filter by filter (each row of
  a weight tensor rescaled to the norm of the same row of the weights; 1-D tensors -- biases,
  BatchNorm scales and shifts -- zeroed). When T is *constant on every row* of every weight tensor,
  the normalised direction is d' = T d, so theta' + t d' = T (theta + t d) and every slice is the
  same. Layer-wise scaling (each row of W_l times alpha, each row of W_{l+1} divided by alpha) and the
  pre-BatchNorm filter scaling (one row of the conv weight) are of that kind: invariant. Filter-wise
  scaling is not: it divides one *column* of W_{l+1}, which changes each row's norm by its own factor
  and leaves that column's direction entries undivided, so the widths **change** (measured: 3 % to
  10 % narrower). With ``include_1d`` (``--include-bias-bn``, surfaces only; the report's slices
  zero 1-D tensors) a bias direction is scaled to the norm of the whole bias: still invariant to
  layer-wise scaling (all of b_l scales by alpha), no longer to the pre-BatchNorm filter scaling (one
  entry of the conv bias does): measured 1.1 % narrower.
* Relative flatness kappa_Tr (Petzka et al. 2021) reads the output layer's weights w and the features phi only:
  kappa = (1/W) sum_p ||phi_p||^2 <w w^T, d^2 S / dz_p^2>. The first three rescalings leave both alone
  (invariant, trivially); ``penultimate_layer`` maps phi -> alpha phi and w -> w / alpha with the output z
  unchanged, so ||phi||^2 gains alpha^2 and w w^T loses it: invariant. ``penultimate_neuron`` scales one
  feature and one column of w by inverse factors: ||phi_p||^2 and w w^T are not rescaled by inverse constants,
  so kappa_Tr **changes** (the paper handles neuron-wise rescalings with a separate measure).
* The Fisher-Rao norm <theta, grad l>^2 (Liang et al. 2019; the verdict's number uses the data's labels):
  when l(T v) = l(v) for all v, grad l(T theta) = T^-1 grad l(theta), so <T theta, T^-1 grad l> =
  <theta, grad l>: invariant to all five, example by example.
* The GGN and the empirical Fisher (``--curvature ggn,ef``): J(T v) = J(v) T^-1 and g_i(T v) = T^-1 g_i(v), so
  G -> T^-1 G T^-1 and F -> T^-1 F T^-1, as the Hessian: their lambda_max and trace change under all five. Decided
  on their dense float64 matrices (``exact_*`` in the bench: rounding only, so any change beyond 1e-9 for both
  alphas counts); the estimates agree wherever the change exceeds 1e-3. The smallest change: the empirical Fisher's
  lambda_max under ``penultimate_neuron``, x1.00016 and x1.00004 (dense), as small as the Lanczos estimate's own
  error at the report's tolerance (2.8e-5 relative). For a ReLU network tr(G) = tr(H): the output is linear in each
  single weight, so the term the GGN drops has a zero diagonal.
* lambda_max and the trace (H -> T^-1 H T^-1), SAM sharpness and average (isotropic) sharpness (a
  Euclidean ball or an isotropic Gaussian, not mapped onto itself by T) and epsilon-sharpness
  (Keskar et al.'s box |delta_i| <= eps (|w_i| + 1): the "+ 1" does not scale) change under all five.
"""

from __future__ import annotations

REPARAMETRISATIONS: dict[str, str] = {
    "layer": "layer-wise rescaling (W_l, b_l)·α, W_{l+1}/α (ReLU, no BatchNorm)",
    "filter": "filter-wise rescaling: one unit's incoming weights ·α, outgoing /α",
    "bn_filter": "a convolution filter ·α before BatchNorm (eval mode, running statistics scaled)",
    "penultimate_layer": "layer-wise rescaling at the output: the feature layer (W_{L−1}, b_{L−1})·α, W_L/α",
    "penultimate_neuron": "neuron-wise rescaling at the output: one feature neuron's incoming weights and bias ·α, "
    "its column of W_L /α",
}
ALL = frozenset(REPARAMETRISATIONS)

# measure key -> reparametrisations it is invariant to (verified by tests/test_invariance.py)
INVARIANT_TO: dict[str, frozenset[str]] = {
    "lambda_max": frozenset(),
    "trace": frozenset(),
    "sharpness_sam": frozenset(),
    "sharpness_epsilon": frozenset(),
    "sharpness_average_isotropic": frozenset(),
    "sharpness_adaptive_l2": ALL,
    "sharpness_adaptive_linf": ALL,
    "sharpness_average_adaptive": ALL,
    "width": frozenset({"layer", "bn_filter", "penultimate_layer"}),
    "ggn_lambda_max": frozenset(),
    "ggn_trace": frozenset(),
    "ef_lambda_max": frozenset(),
    "ef_trace": frozenset(),
    "relative_flatness": frozenset({"layer", "filter", "bn_filter", "penultimate_layer"}),
    "fisher_rao": ALL,
}

# the verdict table's labels (flatfl report's; a test keeps the sharpness ones equal to the report's)
LABELS: dict[str, str] = {
    "lambda_max": "λmax",
    "trace": "trace",
    "sharpness_sam": "SAM sharpness",
    "sharpness_epsilon": "epsilon-sharpness",
    "sharpness_average_isotropic": "average sharpness",
    "sharpness_adaptive_l2": "adaptive sharpness (L2)",
    "sharpness_adaptive_linf": "adaptive sharpness (Linf)",
    "sharpness_average_adaptive": "average adaptive sharpness",
    "width": "1D width at Δloss τ",
    "ggn_lambda_max": "GGN λmax",
    "ggn_trace": "GGN trace",
    "ef_lambda_max": "empirical Fisher λmax",
    "ef_trace": "empirical Fisher trace",
    "relative_flatness": "relative flatness",
    "fisher_rao": "Fisher-Rao norm²",
}

HEADERS: dict[str, str] = {
    "layer": "layer-wise",
    "filter": "filter-wise",
    "bn_filter": "filter before BatchNorm",
    "penultimate_layer": "layer-wise at the output",
    "penultimate_neuron": "neuron-wise at the output",
}


def invariant_to(key: str) -> frozenset[str]:
    """The reparametrisations measure ``key`` is invariant to (``width_0.1`` etc. read ``width``);
    an unknown key is invariant to nothing."""
    if key.startswith("width_"):
        key = "width"
    return INVARIANT_TO.get(key, frozenset())


def is_tested(key: str) -> bool:
    """Whether ``tests/test_invariance.py`` measures ``key`` under the reparametrisations (else nothing is known of
    its invariances, and none is claimed)."""
    return ("width" if key.startswith("width_") else key) in INVARIANT_TO


def markdown_table() -> str:
    """Measure x reparametrisation -> "invariant" / "changes", from :data:`INVARIANT_TO`, with a legend
    (the block docs/landscapes.md holds between ``<!-- invariance-table -->`` markers)."""
    lines = [
        "| measure | " + " | ".join(HEADERS[r] for r in REPARAMETRISATIONS) + " |",
        "|---" * (len(REPARAMETRISATIONS) + 1) + "|",
    ]
    for key, label in LABELS.items():
        cells = ("invariant" if r in INVARIANT_TO[key] else "changes" for r in REPARAMETRISATIONS)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- *{HEADERS[r]}*: {text}" for r, text in REPARAMETRISATIONS.items()]
    return "\n".join(lines) + "\n"
