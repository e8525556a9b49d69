"""``flatfl report --connect``: mode connectivity (Garipov et al. 2018) between the models the report compares.

For a pair of models a, b the quadratic Bézier curve φ_c(t) = (1 - t)² a + 2t(1 - t) c + t² b is trained (SGD
on the bend c, :func:`flatfl.analysis.connectivity.mode_connectivity`) to minimise E_t L(φ_c(t)), and the loss
is read at 21 evenly spaced t along it and along the straight line (1 - t) a + t b. The **barrier** of a path
γ is max_t [L(γ(t)) - ((1 - t) L(a) + t L(b))]: how far the loss rises above the chord joining the end losses
(Frankle et al. 2020). A line barrier near 0: one convex-looking basin; a curve barrier near 0 under a line
barrier above 0: the two minima are joined by a curved low-loss valley (Garipov et al. 2018); both large: a
ridge separates them.

Two kinds of pairs, on the report's analysis data (``--data``/``--samples``; with ``--samples auto`` the
whole selection, as the per-checkpoint subset differs between checkpoints):

* **groups**: for each group compared with the reference and each seed both have, the reference group's
  global model (t = 0) and the other group's (t = 1), at every condition the report compares (the last equal
  round, the matched training loss, the matched accuracy); both at their own matched round.
* **clients**: for each run that saved its client models (``flatfl train --save-clients``) at a compared
  round r, its global model w_r (t = 0) and each of the first ``max_clients`` models its clients returned in
  round r (t = 1; ``clients_NNNN.safetensors``, whose sample-weighted mean is w_r for FedAvg). FedMut's claim
  (Hu et al. 2024) is that the global model lies in a flat area within the range of the clients' models:
  low barriers from the global model to the models it was averaged from. Summarised per group and condition
  by the median and range over seeds and clients.

Every path is seeded with ``seed * 1000 + 905``, the stream of ``flatfl landscape --connect``: the report's
number for a pair equals ``flatfl landscape CKPT_A --connect CKPT_B`` (or ``returned:SLOT``) on the same data.
Each path is cached under ``OUT/runs/`` keyed on the settings and the SHA-256 of both files: a rerun with the
same settings and checkpoints reuses it, and any change recomputes it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from flatfl import checkpoint as ckpt
from flatfl.analysis.connectivity import mode_connectivity
from flatfl.digest import file_digest
from flatfl.errors import UserError
from flatfl.flagtypes import pos_int
from flatfl.runs import timing
from flatfl.runs.checkpoints import _slug, cache_dir
from flatfl.runs.groups import Group, reference_group
from flatfl.runs.measures import connect as landscape_connect
from flatfl.runs.problem import Problem, of_checkpoint
from flatfl.runs.settings import ConnectivitySettings, ReportSettings
from flatfl.runs.sources import note

__all__ = ["MOMENTUM", "POINTS", "STREAM", "add_connect_flags", "connect_seed", "connect_settings",
           "measure_connectivity"]  # fmt: skip

STREAM = 905  # Context.generator(905): flatfl landscape --connect's seed stream
MOMENTUM = 0.9  # mode_connectivity's defaults, recorded in every cache key
POINTS = 21
DEFAULT_CLIENTS = ConnectivitySettings().max_clients


def connect_seed(seed: int) -> int:
    """The seed of every path of a report with ``--seed seed`` (that of ``flatfl landscape --connect``)."""
    return seed * 1000 + STREAM


def add_connect_flags(p: Any) -> None:
    """``--connect`` and its options on ``flatfl report`` (``--connect-steps``/``--connect-lr`` as in
    ``flatfl landscape``)."""
    g = p.add_argument_group(
        "mode connectivity",
        "off by default; one path costs about 1.5-1.7x lambda_max + trace of one checkpoint (docs/landscapes.md)",
    )
    g.add_argument(
        "--connect",
        action="store_true",
        help="mode connectivity (Garipov et al. 2018): the loss along a trained quadratic Bezier curve and along "
        "the straight line, and their barriers, between the compared groups' global models of each seed, and "
        "between each global model and the models its clients returned (runs trained with --save-clients; "
        "others are listed as skipped), at every compared condition; writes connectivity.csv and "
        "connectivity.png/.pdf",
    )
    for flag in landscape_connect.SPEC.flags[1:]:  # --connect-steps, --connect-lr: one meaning in both commands
        g.add_argument(*flag.names, **flag.kwargs)
    g.add_argument(
        "--connect-clients",
        type=pos_int,
        default=None,
        metavar="N",
        help="client paths per run and round: the first N returned models of the round, in the order of "
        f"clients_NNNN.safetensors (default: {DEFAULT_CLIENTS} where saved); a round that returned fewer gives all "
        "of them (a note says when N is above every round's). Given, it asks for them: a report whose runs saved "
        "no client models is refused",
    )


def connect_settings(ns: dict[str, Any]) -> ConnectivitySettings | None:
    """The settings of ``--connect`` and its options, or None when it is off; one line for bad input."""
    opts = [f for f in ("connect_steps", "connect_lr", "connect_clients") if ns.get(f) is not None]
    if not ns.get("connect"):
        if opts:
            names = "/".join("--" + f.replace("_", "-") for f in opts)
            raise UserError(f"{names}: options of --connect (mode connectivity); pass --connect as well")
        return None
    if (ns.get("connect_steps") or 0) > landscape_connect.MAX_STEPS:
        raise UserError(
            f"--connect-steps {ns['connect_steps']}: at most {landscape_connect.MAX_STEPS} SGD steps on the bend"
        )
    d = ConnectivitySettings()
    asked = ns.get("connect_clients") is not None
    if asked:
        runs = [Path(r) for r in ns.get("runs") or []]
        if runs and not any(any(r.glob("clients_*.safetensors")) for r in runs):
            raise UserError(
                f"--connect-clients {ns['connect_clients']}: none of the runs saved client models "
                "(clients_NNNN.safetensors); train with --save-clients, or leave --connect-clients out"
            )
    return ConnectivitySettings(
        require_clients=asked,
        steps=ns.get("connect_steps") or d.steps,
        lr=ns.get("connect_lr") or d.lr,
        max_clients=ns["connect_clients"] if asked else d.max_clients,
    )


class _Paths:
    """Computes (or reads back from the cache) one path at a time; checkpoint problems built once each."""

    def __init__(self, settings: ReportSettings, log: Callable[[str], None]) -> None:
        cs = settings.connect
        assert cs is not None
        self.cs, self.log = cs, log
        # the analysis data of the report; --samples auto picks a subset per checkpoint, so the whole selection
        self.ls = replace(settings.landscape, samples_auto=False, federated=False, bn_reestimate=0)
        ls = self.ls
        self.key = {
            "steps": cs.steps, "lr": cs.lr, "momentum": MOMENTUM, "num_points": POINTS, "seed": connect_seed(ls.seed),
            "data": ls.data, "samples": ls.samples, "dtype": ls.dtype, "batch_size": ls.batch_size,
        }  # fmt: skip
        self._problems: dict[Path, Problem] = {}
        self._digests: dict[Path, str] = {}

    def digest(self, path: Path) -> str:
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return self._digests[path]

    def problem(self, path: Path) -> Problem:
        if path not in self._problems:
            with timing.stage("checkpoint"):
                self._problems[path] = of_checkpoint(path, self.ls)
        return self._problems[path]

    def path(self, a: Path, b: Path, slot: int | None, state: Callable[[], dict], cache: Path, what: str) -> dict:
        """The record of the path from checkpoint ``a`` to ``state()`` (checkpoint ``b``, or slot ``slot`` of
        the clients file ``b``), cached in ``cache``; a curve whose training diverged is said on stderr and
        marked in the record (``curve_diverged``: the note, else None)."""
        rec = self._path(a, b, slot, state, cache, what)
        rec["curve_diverged"] = landscape_connect.curve_diverged(rec["curve_loss"], self.cs.lr)
        if rec["curve_diverged"]:
            note(f"warning: {rec['curve_diverged']}")
        return rec

    def _path(self, a: Path, b: Path, slot: int | None, state: Callable[[], dict], cache: Path, what: str) -> dict:
        key = json.loads(json.dumps({"settings": self.key, "from_sha256": self.digest(a),
                                     "to_sha256": self.digest(b), "slot": slot}))  # fmt: skip
        try:
            old = json.loads(cache.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("key") == key and isinstance(old.get("result"), dict):
            timing.count("connectivity paths reused")
            self.log(f"{what}: reusing {cache}")
            return old["result"]
        timing.count("connectivity paths computed")
        r = mode_connectivity(self.problem(a).objective, state(), steps=self.cs.steps, lr=self.cs.lr,
                              momentum=MOMENTUM, num_points=POINTS, seed=connect_seed(self.ls.seed))  # fmt: skip
        result = {"t": r.t.tolist(), "line_loss": r.line_loss.tolist(), "curve_loss": r.curve_loss.tolist(),
                  "line_barrier": r.line_barrier, "curve_barrier": r.curve_barrier}  # fmt: skip
        self.log(f"{what}: barrier line {r.line_barrier:.4g}, Bezier curve {r.curve_barrier:.4g}")
        cache.parent.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(cache, {"key": key, "result": result})
        return json.loads(json.dumps(result))  # as a cached file reads back


def _group_pairs(groups: Sequence[Group], conds: Sequence[Any], paths: _Paths, out: Path, skipped: list) -> list:
    """The reference group's model to each other group's, seed by seed, at every condition."""
    ref = reference_group(groups)
    found = []
    for c in conds:
        for g in groups:
            if g is ref:
                continue
            for s in sorted(set(ref.seeds) & set(g.seeds)):
                ma, mb = c.rounds[ref.label].get(s), c.rounds[g.label].get(s)
                if ma is None or mb is None or ma.round is None or mb.round is None:
                    skipped.append(f"{c.title}, {ref.label} vs {g.label} seed {s}: a run never reaches it")
                    continue
                a_run, b_run = ref.runs[s], g.runs[s]
                if a_run.info["model"] != b_run.info["model"]:
                    skipped.append(f"{ref.label} vs {g.label} seed {s}: different models, no path between them")
                    continue
                a, b = ckpt.round_path(a_run.path, ma.round), ckpt.round_path(b_run.path, mb.round)
                cache = cache_dir(out, g.label, s, mb.round) / f"connect_{_slug(ref.label)}_round_{ma.round:04d}.json"
                what = f"connectivity {ref.label} round {ma.round} -> {g.label} round {mb.round}, seed {s}"
                try:
                    rec = paths.path(a, b, None, lambda r=b_run, n=mb.round: r.global_state(n), cache, what)
                except ValueError as exc:  # e.g. the same parameters: no path to find
                    skipped.append(f"{what}: {exc}")
                    continue
                found.append({"condition": c.name, "title": c.title, "reference": ref.label, "other": g.label,
                              "seed": s, "round_a": ma.round, "round_b": mb.round, **rec})  # fmt: skip
    return found


def _client_paths(groups: Sequence[Group], conds: Sequence[Any], paths: _Paths, out: Path, skipped: list) -> list:
    """Each run's global model to the first ``max_clients`` models its clients returned, at each compared round."""
    found = []
    most = 0  # the most client models one round returned
    for g in groups:
        for s in g.seeds:
            run = g.runs[s]
            at: dict[int, list[str]] = {}
            for c in conds:
                m = c.rounds[g.label].get(s)
                if m is not None and m.round is not None:
                    at.setdefault(m.round, []).append(c.name)
            for rnd, names in sorted(at.items()):
                file = ckpt.clients_path(run.path, rnd)
                if rnd < 1 or not file.is_file():
                    saved = sorted(int(p.stem.split("_")[1]) for p in run.path.glob("clients_*.safetensors"))
                    why = (f"client models saved at rounds {_rounds_text(saved)} only (--save-clients N saves every "
                           "Nth round)" if saved else "no client models saved (train with --save-clients)")  # fmt: skip
                    skipped.append(f"{g.label} seed {s} round {rnd}: {why}")
                    continue
                _, returned, info = run.clients(rnd)
                a = ckpt.round_path(run.path, rnd)
                most = max(most, len(returned))
                for k in range(min(len(returned), paths.cs.max_clients)):
                    client = info["clients"][k]
                    cache = cache_dir(out, g.label, s, rnd) / f"connect_client_slot{k:03d}.json"
                    what = f"connectivity {g.label} seed {s} round {rnd} -> client {client}'s returned model"
                    try:
                        rec = paths.path(a, file, k, lambda k=k, models=returned: models[k], cache, what)
                    except ValueError as exc:
                        skipped.append(f"{what}: {exc}")
                        continue
                    found.append({"group": g.label, "seed": s, "round": rnd, "conditions": names, "slot": k,
                                  "client": client, **rec})  # fmt: skip
    if paths.cs.require_clients and 0 < most < paths.cs.max_clients:  # "up to N", said when N is above them all
        note(
            f"note: --connect-clients {paths.cs.max_clients}: no compared round returned more than {most} client "
            "models; all of them are used"
        )
    return found


def _rounds_text(rounds: Sequence[int]) -> str:
    return ", ".join(map(str, rounds)) if len(rounds) <= 6 else f"{rounds[0]}, {rounds[1]}, ..., {rounds[-1]}"


def _summary(groups: Sequence[Group], conds: Sequence[Any], clients: Sequence[dict]) -> list[dict[str, Any]]:
    """Per group and condition: the median and range of both barriers over its seeds and clients."""
    rows = []
    for c in conds:
        for g in groups:
            have = [r for r in clients if r["group"] == g.label and c.name in r["conditions"]]
            if not have:
                continue
            row: dict[str, Any] = {"group": g.label, "condition": c.name, "title": c.title, "paths": len(have),
                                   "seeds": sorted({r["seed"] for r in have})}  # fmt: skip
            for kind in ("line", "curve"):
                v = [r[f"{kind}_barrier"] for r in have]
                row.update({f"{kind}_barrier_median": statistics.median(v), f"{kind}_barrier_min": min(v),
                            f"{kind}_barrier_max": max(v)})  # fmt: skip
            rows.append(row)
    return rows


def measure_connectivity(
    groups: Sequence[Group],
    conds: Sequence[Any],
    settings: ReportSettings,
    out: Path,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any] | None:
    """report.json's ``connectivity``: the settings, the group pairs, the client paths with their per-group
    summary, and every path left out with the reason (module docstring); None when ``--connect`` is off."""
    cs = settings.connect
    if cs is None:
        return None
    paths, skipped = _Paths(settings, log), []
    pairs = _group_pairs(groups, conds, paths, out, skipped) if cs.groups else []
    clients = _client_paths(groups, conds, paths, out, skipped) if cs.clients and cs.max_clients > 0 else []
    if cs.require_clients and not clients:
        raise UserError(
            f"--connect-clients {cs.max_clients}: no run saved its client models at a compared round "
            f"({'; '.join(skipped[:2]) or 'none'}); train with --save-clients (every round), or leave "
            "--connect-clients out"
        )
    return {
        "settings": {**asdict(cs), **paths.key},
        "pairs": pairs,
        "clients": clients,
        "client_summary": _summary(groups, conds, clients),
        "skipped": skipped,
    }
