"""The comparison that decides: the method against the strongest baselines, the ceilings
and its own ablations, over several seeds and benchmarks.

    python examples/compare.py --benchmark digits langid split-fmnist --core-rows langid \
        split-fmnist --seeds 0 1 2 --jobs 2 --set threads=1 loggers=none

For each benchmark and seed it runs (docs/results.md explains every row):

* **the method**: ``one-by-one`` with each of naive / ewc / lwf / replay, with homogeneous
  and with heterogeneous small models;
* **baselines**, by kind (DESIGN.md §7): small models with a memory (``isolated`` and
  ``fedavg`` with replay, FedAvg with DER, FedProx with replay, and FedAvg with naive /
  LwF / EWC); ensemble distillation for heterogeneous fleets (``feddf`` with replay, into
  the small models and the FM part); the FM side (``fm-only``: the FM without private
  data; ``fm-fedavg``: the clients train the FM part on their own data, averaged);
* **ceilings**: the FM part, and each small architecture, trained on every client's
  data at once (one client, one task, as many epochs as the whole stream): not
  federated, not continual;
* **ablations** of the method (one-by-one x replay): guidance off, teacher order,
  without server labels, an MLP head instead of a linear one (and LoRA adapters for a
  text FM);
* **the public set's size**: one-by-one x replay and fm-only with smaller and larger
  public sets, and one-by-one x replay distilling on the public set plus augmented
  views or mixes of it (fusion options ``public_views``, ``public_mixes``).

The server holds ``--public-labels`` labelled examples per class of its public set, for
every fusion that uses them. ``--core-rows BENCHMARK...`` keeps, for those benchmarks,
the rows the goal check needs and the FM's capacity ceilings.

It writes ``docs/results.md`` (or ``--doc``): mean ± std over seeds of the final average
accuracy and forgetting of every model a row trains, a figure per benchmark, and the goal
check computed from the table against the best baseline of each kind. Every run's results
folder stays under ``--output`` (``fclkit report`` draws any of them); a finished run found
there is reused when its configuration is the one asked for, and an interrupted one
continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

import fclkit

#: per benchmark: homogeneous and heterogeneous small models, benchmark options of every
#: run, how its public set is resized (a run setting or a benchmark option, and sizes),
#: and whether its default FM can train LoRA adapters (``hf``: PILoRA and a LoRA ceiling)
BENCHMARKS: dict[str, dict[str, Any]] = {
    "digits": {"homo": "mlp", "hetero": "mlp,cnn,lenet", "options": {},
               "public": ("public_fraction", (0.05, 0.3))},
    "mnist": {"homo": "cnn", "hetero": "mlp,cnn,lenet", "options": {},
              "public": ("public_fraction", (0.05, 0.3))},
    "langid": {"homo": "text-cnn", "hetero": "text-bow,text-cnn,text-gru", "options": {},
               "public": ("public_per_language", (10, 90)),
               "lora": True},
    "langid-real": {"homo": "text-cnn", "hetero": "text-bow,text-cnn,text-gru",
                    "options": {}, "public": None, "lora": True},
    # the few-examples regime of a real image set: 200 training images per class
    "split-fmnist": {"homo": "cnn", "hetero": "mlp,cnn,lenet",
                     "options": {"train_per_class": 200},
                     "public": ("public_fraction", (0.05, 0.3))},
}

MODELS = ("fm", "fm_global", "small")
#: small architectures whose joint ceiling runs one seed (text-gru: 23 min a seed here)
SLOW_ARCHITECTURES = ("text-gru",)
LABELS = {"fm": "personalised FM", "fm_global": "global FM", "small": "small models"}
METHOD_CL = ("naive", "ewc", "lwf", "replay")
METHOD = "one-by-one × replay"  # the method row the goal check and ablations are about
#: the method with our addition: per-class feature statistics (fusion option calibration)
CALIBRATED = "one-by-one × replay + feature statistics"
#: the same, guiding the small models only on examples of classes the FM knows
CALIBRATED_KNOWN = "feature statistics, only known classes guided"
FM_ONLY, FM_FEDAVG = "FM without private data (fm-only)", "FM-side FedAvg (fm-fedavg)"
FEDDF, FEDAVG_REPLAY, ISOLATED = "FedDF × replay", "FedAvg × replay", "isolated × replay"
FM_CEILING = "FM part, joint"
#: the FM's capacity: larger trainable parts, trained the same way as the ceiling
FM_CAPACITY = ("FM part, joint, MLP head", "FM part, joint, LoRA (5 epochs)")
GROUPS = {"method": "The method", "baseline": "Baselines",
          "literature": "Methods from the literature (docs/methods.md)", "ceiling": "Ceilings",
          "ablation": "Ablations of the method (one-by-one × replay)",
          "public": "The public set's size, and a larger transfer set made from it "
                    "(one-by-one × replay and fm-only)"}
#: rows the goal check needs, and the FM capacity ceilings (``--core-rows``)
LITERATURE = ("GLFC × replay", "TARGET × naive", "PILoRA")
CORE = {METHOD, CALIBRATED, CALIBRATED_KNOWN, ISOLATED, FEDAVG_REPLAY, "FedAvg × DER", FEDDF,
        FM_ONLY, FM_FEDAVG, FM_CEILING, *FM_CAPACITY, *LITERATURE}


def _row(label: str, group: str, fusion: str, cl: str, models: str, client_models: str,
         labels: int, shows: tuple[str, ...] = MODELS, max_seeds: int = 0,
         **settings: Any) -> dict:
    """One row; ``max_seeds``: run only the first that many seeds (0: all), for a row
    too slow on this machine for every seed (the table says how many it has)."""
    return {"label": label, "group": group, "fusion": fusion, "cl": cl, "models": models,
            "client_models": client_models, "labels": labels, "shows": shows,
            "max_seeds": max_seeds, "set": settings}


def plan(benchmark: str, labels: int, rows: str = "all", fm: str | None = None,
         tasks: int = 5, rounds: int = 3) -> list[dict]:
    """Every run of one benchmark and seed; ``fm``: the benchmark's default FM (FedDF
    distils into it), ``tasks``/``rounds``: the runs' (a ceiling trains as long)."""
    spec = BENCHMARKS[benchmark]
    homo, hetero = spec["homo"], spec["hetero"]
    small, fm_side = ("small",), ("fm", "fm_global")
    runs = []
    for models, kind in ((homo, "homogeneous"), (hetero, "heterogeneous")):
        runs += [_row(f"one-by-one × {cl}", "method", "one-by-one", cl, kind, models, labels)
                 for cl in METHOD_CL]
        runs.append(_row(CALIBRATED, "method", "one-by-one", "replay", kind, models, labels,
                         fusion_options={"calibration": "gaussian"}))
    runs += [
        _row(ISOLATED, "baseline", "isolated", "replay", "homogeneous", homo, labels, small),
        _row(ISOLATED, "baseline", "isolated", "replay", "heterogeneous", hetero, labels,
             small),
        _row(FEDAVG_REPLAY, "baseline", "fedavg", "replay", "homogeneous", homo, labels,
             small),
        _row("FedAvg × DER", "baseline", "fedavg", "der", "homogeneous", homo, labels, small),
        _row("FedProx × replay", "baseline", "fedprox", "replay", "homogeneous", homo,
             labels, small),
        _row("FedAvg fine-tuning", "baseline", "fedavg", "naive", "homogeneous", homo,
             labels, small),
        _row("FedEWC", "baseline", "fedavg", "ewc", "homogeneous", homo, labels, small),
        _row("FedLwF", "baseline", "fedavg", "lwf", "homogeneous", homo, labels, small),
        _row(FEDDF, "baseline", "feddf", "replay", "homogeneous", homo, labels, fm=fm),
        _row(FEDDF, "baseline", "feddf", "replay", "heterogeneous", hetero, labels, fm=fm),
        _row(FM_ONLY, "baseline", "fm-only", "naive", "homogeneous", homo, max(labels, 1),
             fm_side),
        _row(FM_FEDAVG, "baseline", "fm-fedavg", "replay", "homogeneous", homo, labels,
             fm_side),
    ]
    if spec.get("lora"):  # an FM that trains LoRA adapters
        runs.append(_row("PILoRA", "literature", "pilora", "naive", "homogeneous", homo,
                         labels, fm_side, fm=fm))
    else:  # image benchmarks: the small models' methods
        runs += [_row("GLFC × replay", "literature", "glfc", "replay", "homogeneous", homo,
                      labels, small),
                 _row("TARGET × naive", "literature", "target", "naive", "homogeneous", homo,
                      labels, small)]
    joint = {"clients": 1, "tasks": 1, "rounds": tasks * rounds}
    runs.append(_row(FM_CEILING, "ceiling", "fm-fedavg", "naive", "homogeneous", homo,
                     labels, fm_side, **joint))
    runs.append(_row(FM_CAPACITY[0], "ceiling", "fm-fedavg", "naive",
                     "homogeneous", homo, labels, fm_side, fm_options={"head": "mlp"},
                     **joint))
    if spec.get("lora"):  # LoRA trains the backbone's attention: 5 epochs (one seed) cost
        # about as much CPU time here as the linear head's 75 epochs over all three seeds;
        # Adam at 1e-3 (at fm-fedavg's default 5e-3 LoRA ends below the linear head)
        runs.append(_row(FM_CAPACITY[1], "ceiling", "fm-fedavg", "naive",
                         "homogeneous", homo, labels, fm_side, max_seeds=1,
                         fm_options={"lora": True}, fusion_options={"lr": 1e-3},
                         clients=1, tasks=1, rounds=5, epochs=1))
    for arch in dict.fromkeys(hetero.split(",")):  # a recurrent net is slow here: one seed
        runs.append(_row(f"small model {arch}, joint", "ceiling", "fedavg", "naive",
                         "homogeneous", arch, labels, small,
                         max_seeds=1 if arch in SLOW_ARCHITECTURES else 0, **joint))
    runs += [
        _row("guidance off", "ablation", "one-by-one", "replay", "homogeneous", homo, labels,
             fusion_options={"guidance_weight": 0.0}),
        _row("own model first", "ablation", "one-by-one", "replay", "homogeneous", homo,
             labels, fusion_options={"order": "own-first"}),
        _row("random teacher order", "ablation", "one-by-one", "replay", "homogeneous", homo,
             labels, fusion_options={"order": "random"}),
        _row("no server labels", "ablation", "one-by-one", "replay", "homogeneous", homo, 0),
        _row("MLP head", "ablation", "one-by-one", "replay", "homogeneous", homo, labels,
             fm_options={"head": "mlp"}),
        _row("feature statistics, guidance off", "ablation", "one-by-one", "replay",
             "homogeneous", homo, labels,
             fusion_options={"calibration": "gaussian", "guidance_weight": 0.0}),
        _row(CALIBRATED_KNOWN, "ablation", "one-by-one", "replay", "homogeneous", homo,
             labels, fusion_options={"calibration": "gaussian",
                                     "guidance_unknown_classes": False}),
    ]
    if spec["public"] is not None:
        where, sizes = spec["public"]
        for size in sizes:
            extra = ({where: size} if where in fclkit.config.FIELDS
                     else {"benchmark_options": {where: size}})
            for label, fusion, shows in ((METHOD, "one-by-one", MODELS),
                                         (FM_ONLY, "fm-only", fm_side)):
                runs.append(_row(f"{label}, public {size}", "public", fusion,
                                 "replay" if fusion == "one-by-one" else "naive",
                                 "homogeneous", homo, max(labels, 1), shows, **extra))
    for extra, what in (({"public_views": 4}, "4 augmented views"),
                        ({"public_mixes": 4}, "4 mixes")):  # a larger transfer set
        runs.append(_row(f"{METHOD}, transfer set + {what} per public example", "public",
                         "one-by-one", "replay", "homogeneous", homo, labels,
                         fusion_options=extra))
    if rows == "core":
        runs = [r for r in runs if r["label"] in CORE
                or (r["group"] == "ceiling" and r["label"].startswith("small model"))]
    options = spec["options"]
    for r in runs:  # every run of a benchmark shares its options (and may add its own)
        if options or "benchmark_options" in r["set"]:
            r["set"]["benchmark_options"] = {**options, **r["set"].get("benchmark_options", {})}
        if r["set"].get("fm") is None:
            r["set"].pop("fm", None)
    return runs


def run_name(benchmark: str, spec: dict, seed: int) -> str:
    """The run's folder name: the row and its models, readable and unique per row."""
    slug = "".join(c if c.isalnum() else "-" for c in spec["label"].replace("×", "x"))
    slug = "-".join(p for p in slug.lower().split("-") if p)
    return f"{benchmark}-L{spec['labels']}-{slug}-{spec['models'][:6]}-s{seed}"


#: config fields added after runs were made, whose default changes nothing
NEUTRAL_NEW_FIELDS = ("grad_clip", "scenario", "domain_transform", "rotation_angle",
                      "class_order", "classes_per_client", "participation", "join_tasks")


def _plain(value: Any) -> Any:
    """``value`` as TOML gives it back (tuples are lists), for comparing configurations."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@functools.cache
def _registry() -> Any:
    """The installed components, discovered once for every run checked."""
    from fclkit.plugins import build_registry

    return build_registry()


def check_reusable(run_dir: Path, config: fclkit.ExperimentConfig) -> None:
    """Refuse to reuse a finished run made with another configuration (e.g. other
    ``--set`` values, or a default that changed since): its results would be passed
    off as this comparison's."""
    import tomllib

    saved = tomllib.loads((run_dir / "config.toml").read_text())
    wanted = _plain(config.to_dict())
    # 'auto' is resolved in the saved file: compare those fields only when not 'auto'
    resolved = [k for k in ("fm", "client_models") if "auto" in
                ((wanted[k],) if isinstance(wanted[k], str) else wanted[k])]
    # fields added later whose default reproduces what runs did before they existed
    for key in NEUTRAL_NEW_FIELDS:
        if key not in saved and wanted.get(key) == _plain(fclkit.config.FIELDS[key].default):
            saved[key] = wanted[key]
    differ = sorted(k for k in wanted if k not in resolved and saved.get(k) != wanted[k])
    # component options, defaults included (older runs' run.json did not record them)
    from fclkit.kinds import by_name
    from fclkit.runtime.experiment import Experiment

    recorded = {(c["kind"], c["name"]): c.get("options")
                for c in json.loads((run_dir / "run.json").read_text())["components"]}
    unchecked = []
    components = Experiment(config, _registry()).components
    for selected, now in zip(components.all(), components.records(), strict=True):
        then = recorded.get((now["kind"], now["name"]))
        if then is not None:  # options older runs set as top-level fields (e.g. guidance_*)
            table = by_name()[now["kind"]].options_field
            then = {**{key: saved[old] for old, (t, key) in
                       fclkit.config.DEPRECATED_FIELDS.items()
                       if t == table and old in saved and key in now["options"]}, **then}
        if then is None:
            unchecked.append(f"{now['kind']} {now['name']!r}")
        elif then != now["options"]:
            # an option added since the run, at its default: it reproduces what the run did
            # (component options are attrs fields; a new one's default must change nothing)
            defaults = {a.name: a.default for a in attrs.fields(selected.cls.Options)}
            changed = sorted(k for k in now["options"] if then.get(k) != now["options"][k]
                             and not (k not in then and now["options"][k] == defaults.get(k)))
            differ += [f"{now['kind']} option {k}" for k in changed]
            saved.update({f"{now['kind']} option {k}": then.get(k) for k in changed})
            wanted.update({f"{now['kind']} option {k}": now["options"][k] for k in changed})
    if unchecked:
        print(f"warning: {run_dir.name} records no options of {', '.join(unchecked)} "
              "(made by an older fclkit); reused unchecked", flush=True)
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k, '(absent)')!r} there, {wanted[k]!r} now"
                          for k in differ[:4])
        sys.exit(f"error: {run_dir} was made with another configuration ({shown}); "
                 "pass another --output, or move that folder away to rerun it")


def _run_one(kwargs: dict) -> tuple[dict, float]:
    """One run (in a worker process when ``--jobs`` > 1): its metrics and wall time. With
    ``resume`` among ``kwargs``, that unfinished run continues from its checkpoint."""
    started = time.perf_counter()
    kwargs = dict(kwargs)
    resume = kwargs.pop("resume", None)
    if resume is not None:
        metrics = fclkit.run(None, resume=resume).metrics
    else:
        metrics = fclkit.run(fclkit.ExperimentConfig(**kwargs)).metrics
    return metrics, time.perf_counter() - started


def finished(run_dir: Path) -> bool:
    """A run that ran to its end (an interrupted one also leaves its partial metrics)."""
    from fclkit.results import run_status

    return (run_dir / "metrics.json").exists() and run_status(run_dir) == "finished"


def resumable(run_dir: Path) -> bool:
    """An unfinished run that wrote a checkpoint (``fclkit run --resume`` continues it)."""
    return (run_dir / "checkpoint" / "latest.json").exists() and (
        run_dir / "config.toml").exists() and not finished(run_dir)


def _config_kwargs(benchmark: str, spec: dict, seed: int, output: Path,
                   overrides: dict) -> dict:
    settings = {**overrides, **spec["set"]}
    for table in ("benchmark_options", "fusion_options", "fm_options", "cl_options"):
        if table in overrides and table in spec["set"]:
            settings[table] = {**overrides[table], **spec["set"][table]}
    return {"benchmark": benchmark, "fusion": spec["fusion"], "cl": spec["cl"],
            "client_models": spec["client_models"], "seed": seed,
            "public_labels": spec["labels"], "output": str(output),
            "name": run_name(benchmark, spec, seed), **settings}


def _row_result(benchmark: str, spec: dict, seed: int, metrics: dict) -> dict:
    return {**spec, "benchmark": benchmark, "seed": seed,
            "seconds": metrics.get("timings_seconds", {}).get("total", 0.0),
            "results": {m: {"accuracy": metrics["mean"][m]["average_accuracy"],
                            "forgetting": metrics["mean"][m]["average_forgetting"]}
                        for m in metrics["models"] if m in spec["shows"]}}


def _default_fm(benchmark: str) -> str | None:
    return _registry().get("benchmark", benchmark).cls.default_foundation_model


def run_all(benchmarks: list[str], seeds: list[int], output: Path, overrides: dict,
            labels: int, core: Sequence[str] = (), reuse_only: bool = False,
            jobs: int = 1) -> list:
    """Run (or reuse) every planned run; the rows of the finished ones."""
    tasks = int(overrides.get("tasks", fclkit.config.FIELDS["tasks"].default))
    rounds = int(overrides.get("rounds", fclkit.config.FIELDS["rounds"].default))
    todo, results = [], []
    for benchmark in benchmarks:
        specs = plan(benchmark, labels, "core" if benchmark in core else "all",
                     fm=_default_fm(benchmark), tasks=tasks, rounds=rounds)
        for spec in specs:
            for seed in seeds[:spec.get("max_seeds") or None]:
                schedule(benchmark, spec, seed, output, overrides, todo, results,
                         reuse_only)
    return execute(todo, results, jobs)


def schedule(benchmark: str, spec: dict, seed: int, output: Path, overrides: dict,
             todo: list, results: list, reuse_only: bool = False) -> None:
    """One planned run: its row appended to ``results`` when ``output`` holds it finished
    (made with the same configuration), else the run appended to ``todo`` (resumed from
    its checkpoint when it was interrupted)."""
    kwargs = _config_kwargs(benchmark, spec, seed, output, overrides)
    run_dir = output / kwargs["name"]
    if finished(run_dir):  # a comparison run before: reuse what it finished
        check_reusable(run_dir, fclkit.ExperimentConfig(**kwargs))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        results.append(_row_result(benchmark, spec, seed, metrics))
    elif reuse_only:
        print(f"not run yet, left out: {kwargs['name']}", flush=True)
    elif resumable(run_dir):  # interrupted: continue from its checkpoint
        check_reusable(run_dir, fclkit.ExperimentConfig(**kwargs))
        print(f"resuming the unfinished run {run_dir}", flush=True)
        todo.append((benchmark, spec, seed, {**kwargs, "resume": str(run_dir)}))
    else:
        if run_dir.exists():  # no checkpoint: fclkit would write beside it
            print(f"removing the unfinished run {run_dir}", flush=True)
            shutil.rmtree(run_dir)
        todo.append((benchmark, spec, seed, kwargs))


def execute(todo: list, results: list, jobs: int = 1) -> list:
    """Run the ``todo`` of :func:`schedule` (``jobs`` at a time, each in a fresh process);
    ``results`` with the rows of the runs added."""
    print(f"{len(results)} finished runs reused, {len(todo)} to run", flush=True)
    if jobs <= 1:
        for i, (benchmark, spec, seed, kwargs) in enumerate(todo):
            metrics, seconds = _run_one(kwargs)
            print(f"[{i + 1}/{len(todo)}] {kwargs['name']}: {seconds:.0f}s", flush=True)
            results.append(_row_result(benchmark, spec, seed, metrics))
        return results
    # spawn: a fresh interpreter per worker (no torch state forked from this process)
    with concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, item[3]): item for item in todo}
        for i, future in enumerate(concurrent.futures.as_completed(futures)):
            benchmark, spec, seed, kwargs = futures[future]
            metrics, seconds = future.result()
            print(f"[{i + 1}/{len(todo)}] {kwargs['name']}: {seconds:.0f}s", flush=True)
            results.append(_row_result(benchmark, spec, seed, metrics))
    return results


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:  # one seed: no spread to show
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _mean(values: list[float]) -> float | None:
    return 100 * statistics.fmean(values) if values else None


def summarise(rows: list[dict]) -> dict:
    """(benchmark, label, models) -> per model, the seeds' accuracies and forgettings."""
    groups: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        key = (r["benchmark"], r["label"], r["models"])
        g = groups.setdefault(key, {"group": r["group"], "seeds": [],
                                    **{m: {"accuracy": [], "forgetting": []}
                                       for m in MODELS}})
        g["seeds"].append(r["seed"])
        for m, res in r["results"].items():
            g[m]["accuracy"].append(res["accuracy"])
            if res["forgetting"] is not None:
                g[m]["forgetting"].append(res["forgetting"])
    return groups


def table(groups: dict, benchmark: str, group: str, seeds: int = 0) -> list[str]:
    """One group's rows; a row finished for fewer than ``seeds`` seeds says how many."""
    keys = [k for k in groups if k[0] == benchmark and groups[k]["group"] == group]
    if not keys:
        return []
    lines = [f"### {GROUPS[group]}", "",
             "| run | small models | personalised FM acc. | personalised FM forg. | "
             "global FM acc. | small acc. | small forg. |", "|---|---|---|---|---|---|---|"]
    for key in keys:
        g = groups[key]
        few = f" ({len(g['seeds'])} of {seeds} seeds)" if len(g["seeds"]) < seeds else ""
        lines.append(
            f"| {key[1]}{few} | {key[2]} | {_cell(g['fm']['accuracy'])} | "
            f"{_cell(g['fm']['forgetting'])} | {_cell(g['fm_global']['accuracy'])} | "
            f"{_cell(g['small']['accuracy'])} | {_cell(g['small']['forgetting'])} |")
    return lines + [""]


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def goal_check(groups: dict, benchmark: str, method: str = METHOD) -> list[str]:
    """The goal of the comparison (issue #15), checked from the table: (a) the personalised
    FM reaches 95 % of the FM part's joint ceiling; (b) the method's small models are at
    least as good as FedAvg × replay's (homogeneous) and as isolated × replay's and FedDF's
    (heterogeneous); (c) its FM beats the FM-side baselines that keep the premise (fm-only,
    FedDF into the FM) by 2 points and is within 3 of fm-fedavg; heterogeneous small models
    cost at most 2 points of FM accuracy."""
    def acc(label: str, model: str, models: str = "homogeneous") -> float | None:
        g = groups.get((benchmark, label, models))
        return _mean(g[model]["accuracy"]) if g else None

    method_fm, method_small = acc(method, "fm"), acc(method, "small")
    if method_fm is None:
        return []
    checks: list[tuple[str, str, float | None, float | None, bool | None]] = []

    def check(name: str, what: str, ours: float | None, theirs: float | None,
              ok: Any) -> None:
        checks.append((name, what, ours, theirs,
                       None if ours is None or theirs is None else ok(ours, theirs)))

    check("(a) the personalised FM reaches 95 % of the FM part's joint ceiling",
          "personalised FM vs 0.95 × FM part, joint", method_fm,
          None if acc(FM_CEILING, "fm") is None else 0.95 * acc(FM_CEILING, "fm"),
          lambda a, b: a >= b)
    check("(b) small models ≥ FedAvg × replay's (homogeneous)", "small models",
          method_small, acc(FEDAVG_REPLAY, "small"), lambda a, b: a >= b)
    for label in (ISOLATED, FEDDF):
        check(f"(b) small models ≥ {label}'s (heterogeneous)", "small models",
              acc(method, "small", "heterogeneous"), acc(label, "small", "heterogeneous"),
              lambda a, b: a >= b)
    check(f"(c) personalised FM ≥ {FM_ONLY} + 2", "FM", method_fm, acc(FM_ONLY, "fm"),
          lambda a, b: a >= b + 2)
    check(f"(c) personalised FM ≥ {FEDDF} (its FM part) + 2", "FM", method_fm,
          acc(FEDDF, "fm"), lambda a, b: a >= b + 2)
    check(f"(c) personalised FM within 3 points of {FM_FEDAVG}", "FM", method_fm,
          acc(FM_FEDAVG, "fm"), lambda a, b: a >= b - 3)
    check("(c) heterogeneous small models cost ≤ 2 points of FM accuracy",
          "FM, heterogeneous vs homogeneous", acc(method, "fm", "heterogeneous"), method_fm,
          lambda a, b: b - a <= 2)

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f}"

    lines = [f"### Goal check ({benchmark}): {method}", "",
             f"Computed from the tables above, for **{method}** (homogeneous unless "
             "said).", "", "| goal | compares | method | reference | margin | met? |",
             "|---|---|---|---|---|---|"]
    for name, what, ours, theirs, ok in checks:
        margin = "–"
        if ours is not None and theirs is not None:  # two decimals where one hides the sign
            d = ours - theirs
            margin = f"{d:+.2f}" if 0 < abs(d) < 0.05 else f"{d:+.1f}"
        lines.append(f"| {name} | {what} | {num(ours)} | {num(theirs)} | {margin} | "
                     f"{'–' if ok is None else _verdict(ok)} |")
    best_small = max(((acc(k[1], "small") or 0.0, k[1]) for k in groups
                      if k[0] == benchmark and groups[k]["group"] == "ceiling"
                      and k[1].startswith("small model")), default=(0.0, ""))
    fm_ceiling = acc(FM_CEILING, "fm")
    if method == METHOD and fm_ceiling is not None and best_small[0]:
        lines += ["", f"Is the FM stronger than the small models on this data? Trained "
                  f"jointly on every client's data, the FM part reaches {fm_ceiling:.1f} % "
                  f"and the best small model ({best_small[1].split()[2].rstrip(',')}) "
                  f"{best_small[0]:.1f} %: "
                  + ("the FM is stronger." if fm_ceiling > best_small[0] else
                     "**the small model is stronger**: an FM taught by the small models has "
                     "less room to beat their federated baselines here than its ceiling "
                     "suggests.")]
    return lines + [""]


def figure(groups: dict, benchmark: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in groups if k[0] == benchmark and groups[k]["group"] in
            ("method", "baseline", "ceiling") and k[1] in CORE | {f"one-by-one × {c}"
                                                               for c in METHOD_CL}]
    names = [f"{k[1]}\n({k[2][:6]}.)" for k in keys]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(keys)), 4.8))
    width = 0.27
    for i, m in enumerate(MODELS):
        means = [_mean(groups[k][m]["accuracy"]) or 0.0 for k in keys]
        stds = [100 * statistics.stdev(groups[k][m]["accuracy"])
                if len(groups[k][m]["accuracy"]) > 1 else 0 for k in keys]
        ax.bar([x + (i - 1) * width for x in range(len(keys))], means, width, yerr=stds,
               label=LABELS[m], capsize=2)
    ax.set_xticks(range(len(keys)), names, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="final average accuracy (%)", ylim=(0, 100),
           title=f"{benchmark}: final average accuracy (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ANALYSIS = "<!-- analysis: kept when the tables are refreshed -->"


def write_doc(groups: dict, benchmarks: list[str], seeds: list[int], doc: Path,
              command: str, seconds: float, labels: int) -> None:
    kept = ""
    if doc.exists() and ANALYSIS in doc.read_text(encoding="utf-8"):
        kept = doc.read_text(encoding="utf-8").split(ANALYSIS, 1)[1]
    figures = doc.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Results: does the method work?", "",
             "<!-- written by examples/compare.py; rerun it to refresh -->", "",
             f"Made by `{command}`: {seconds / 60:.0f} minutes of runs on a 2-core CPU "
             f"machine (seeds {', '.join(map(str, seeds))}; fclkit {fclkit.__version__}).",
             "", "Final average accuracy and average forgetting, in %, mean ± std over seeds "
             "(each seed: mean over clients; a row run for fewer seeds says how many, and "
             "with one seed shows its value alone). '–': the row does not train that model "
             "(FedAvg-style baselines have no FM; `fm-only`, `fm-fedavg` and the FM "
             "ceilings do not train the small models). The server holds "
             f"{labels} labelled examples per class of its public set (`public_labels`), for "
             "every fusion that uses them; the rest of the public set is unlabelled. A "
             "ceiling is one client holding every client's data, one task with every class, "
             "trained for as many rounds as the whole stream (not federated, not "
             "continual).", ""]
    for b in benchmarks:
        if not any(k[0] == b for k in groups):
            continue
        figure(groups, b, figures / f"{b}-accuracy.png")
        lines += [f"## {b}", ""]
        for group in GROUPS:
            lines += table(groups, b, group, len(seeds))
        lines += [f"![{b}](results/{b}-accuracy.png)", ""]
        lines += goal_check(groups, b) + goal_check(groups, b, CALIBRATED)
    doc.write_text("\n".join(lines) + "\n" + ANALYSIS + kept, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", nargs="+", default=["digits"],
                        choices=sorted(BENCHMARKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=Path("runs/compare"))
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"),
                        help="where the table goes; an analysis section is kept if present")
    parser.add_argument("--public-labels", type=int, default=5, metavar="N",
                        help="labelled public examples per class the server holds (default 5)")
    parser.add_argument("--core-rows", nargs="*", default=[], metavar="BENCHMARK",
                        help="benchmarks that get only the rows the goal check needs (the "
                        "method, the strongest baselines, the ceilings, the FM's capacity)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel, each in its own process (use --set threads=1)")
    parser.add_argument("--reuse-only", action="store_true",
                        help="run nothing: write the doc from the finished runs in --output")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="configuration overrides for every run, e.g. rounds=2")
    args = parser.parse_args(argv)
    overrides = fclkit.config.parse_option_pairs(args.set, "--set")
    rows = run_all(args.benchmark, args.seeds, args.output, overrides, args.public_labels,
                   args.core_rows, args.reuse_only, args.jobs)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "comparison.json").write_text(json.dumps(rows, indent=1))
    given = [a for a in (sys.argv[1:] if argv is None else argv)
             if a not in ("--reuse-only",)]
    command = "python examples/compare.py " + " ".join(given)  # what makes the runs
    # the runs' own wall times (runs reused from --output count with the time they took)
    write_doc(summarise(rows), args.benchmark, args.seeds, args.doc, command.strip(),
              sum(r["seconds"] for r in rows), args.public_labels)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
