"""Tune the server's fusion in seconds: record a run's uploads once, fuse them again.

    # 1. run an experiment once and keep every round's uploads (the small models)
    python examples/fusion_replay.py record uploads.safetensors \
        --set benchmark=langid cl=replay public_labels=5

    # 2. fuse the same uploads again with other fusion options; each option set is one line
    python examples/fusion_replay.py replay uploads.safetensors --try epochs=20,lr=5e-3 \
        --try epochs=2

``replay`` rebuilds the run from its recorded configuration (same benchmark, seed,
public set and foundation model), feeds the recorded uploads round by round to the
fusion (``--fusion`` picks another one, e.g. ``fm-only``), and evaluates the
foundation-model parts the fusion sends back exactly as a run does: the personalised
part on each client's own test tasks, the global part on every client's. The first line
replays the recorded options and reproduces the recorded run's FM accuracies; each
``--try`` adds a line (``--fusion fm-only`` replays another fusion on the same uploads).

A recording holds every upload (tasks × rounds × clients small models: 5 MB for langid's
defaults) and the run's configuration, stored like fclkit's checkpoints: the tensors in
``NAME.safetensors``, the rest in ``NAME.json`` beside it (``NAME``, ``NAME.safetensors``
and ``NAME.json`` all name the pair). Nothing is pickled: reading a recording, even one
from elsewhere, never executes code, and a damaged one is one clear error.

What a replay does not do: the clients do not train again, so the FM's guidance of
the small models (which a different FM would change) is the recorded run's. Use it to
search fusion settings, then confirm the choice with real runs (``fclkit run``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import fclkit
from fclkit.config import parse_option_pairs
from fclkit.metrics import average_accuracy, average_forgetting
from fclkit.serialization import load_state, save_state

FORMAT = "fclkit.fusion-replay/2"
HOW = "make one with: python examples/fusion_replay.py record NAME.safetensors"


def recording_files(path: Path) -> tuple[Path, Path]:
    """The two files of the recording ``path`` names: tensors, and the JSON beside them."""
    tensors = Path(path).with_suffix(".safetensors")
    return tensors, tensors.with_suffix(".json")


def _recording(fusion_cls: type) -> tuple[type, list]:
    """A subclass of ``fusion_cls`` that keeps a copy of every round's uploads."""
    rounds: list = []

    def fuse(self: Any, round_info: Any, uploads: Any, failures: Any) -> Any:
        rounds.append((round_info.task, round_info.round, [
            {**u.to_state(), "classes_seen": tuple(u.classes_seen),
             "small_state": {k: v.detach().cpu().clone() for k, v in u.small_state.items()}}
            for u in uploads]))
        return fusion_cls.fuse(self, round_info, uploads, failures)

    name = f"recording-{fusion_cls.name}"
    return type("Recording", (fusion_cls,), {"name": name, "fuse": fuse}), rounds


def record(out: Path, overrides: dict[str, Any]) -> None:
    import attrs

    from fclkit.plugins import build_registry
    from fclkit.runtime.experiment import Experiment

    config = fclkit.load_config(None, {"loggers": "none", **overrides})
    registry = build_registry()
    # every fusion option, defaults included: "as recorded" stays so if a default changes
    config = attrs.evolve(config, fusion_options=attrs.asdict(
        Experiment(config, registry).components.one("fusion").options))
    recording, rounds = _recording(registry.get("fusion", config.fusion).cls)
    result = fclkit.run(attrs.evolve(config, fusion=recording.name), registry=registry,
                        components=[recording], write_results=False)
    tensors, skeleton = recording_files(out)
    tensors.parent.mkdir(parents=True, exist_ok=True)
    save_state({"format": FORMAT, "config": config.to_dict(),
                "rounds": [[task, rnd, uploads] for task, rnd, uploads in rounds],
                "metrics": result.metrics}, tensors)
    mean = result.metrics["mean"]
    print(f"recorded {len(rounds)} rounds to {tensors} (+ {skeleton.name}); the run: "
          + ", ".join(f"{m} {v['average_accuracy'] * 100:.1f} %" for m, v in mean.items()))


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def load_recording(path: Path) -> dict[str, Any]:
    """Read a recording (safetensors + JSON only); anything else is a ConfigError."""
    from fclkit.messages import Upload

    tensors, skeleton = recording_files(path)
    if not tensors.is_file() or not skeleton.is_file():
        if Path(path).is_file() and Path(path) not in (tensors, skeleton):
            # e.g. an old pickled uploads.pt: never unpickled
            raise fclkit.ConfigError("recording", str(path),
                                     "is not a fusion_replay recording (one is a "
                                     "NAME.safetensors + NAME.json pair)", hint=HOW)
        missing = tensors if not tensors.is_file() else skeleton
        raise fclkit.ConfigError("recording", str(path), f"file not found: {missing}",
                                 hint=HOW)
    try:
        data = load_state(tensors)
    except fclkit.FclkitError as exc:
        raise fclkit.ConfigError("recording", str(path), f"is damaged: {exc}",
                                 hint="record it again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise fclkit.ConfigError("recording", str(path), "is not a fusion_replay recording",
                                 hint=HOW)
    try:
        config, metrics, rounds = data["config"], data["metrics"], data["rounds"]
        _require(isinstance(config, dict), "the configuration is not a table")
        for key in ("benchmark", "seed", "cl", "fusion"):
            _require(key in config, f"the configuration has no {key}")
        _require(isinstance(metrics, dict) and isinstance(metrics.get("mean"), dict),
                 "the metrics have no mean")
        for scores in metrics["mean"].values():
            _require(isinstance(scores["average_accuracy"], (int, float)),
                     "a mean average_accuracy is not a number")
        _require(isinstance(rounds, list), "rounds is not a list")
        for entry in rounds:
            task, rnd, uploads = entry
            _require(isinstance(task, int) and isinstance(rnd, int)
                     and isinstance(uploads, list), "a round is not [task, round, uploads]")
            for upload in uploads:
                Upload.from_state(upload)
    except (KeyError, TypeError, ValueError) as exc:
        raise fclkit.ConfigError("recording", str(path),
                                 f"is damaged: {type(exc).__name__}: {exc}",
                                 hint="record it again") from None
    return data


class Replayer:
    """The recorded run rebuilt once (data, foundation model); fuses its uploads again."""

    def __init__(self, data: dict[str, Any]) -> None:
        from fclkit.config import config_from_mapping
        from fclkit.plugins import build_registry
        from fclkit.runtime.experiment import Experiment

        self.data = data
        self.recorded = config_from_mapping({**data["config"], "loggers": ["none"]})
        self.registry = build_registry()
        self.base = Experiment(self.recorded, self.registry)
        self.base.prepare()  # loads the benchmark and the foundation model once
        if self.base.foundation_model is None:
            raise fclkit.ConfigError("fusion", self.recorded.fusion,
                                     "the recorded run has no foundation model to evaluate")

    def experiment(self, fusion: str | None, options: dict[str, Any]) -> Any:
        """The recorded run with another fusion and/or options, ready to fuse."""
        import attrs

        from fclkit.runtime.experiment import Experiment

        recorded = self.recorded
        if fusion is not None and fusion != recorded.fusion:
            config = attrs.evolve(recorded, fusion=fusion, fusion_options=options)
        else:
            config = attrs.evolve(recorded, fusion_options={**recorded.fusion_options,
                                                            **options})
        experiment = Experiment(config, self.registry)
        experiment.stream = self.base.stream
        experiment.foundation_model = self.base.foundation_model
        experiment.initial_fm_state = self.base.initial_fm_state
        experiment.setup_server()
        return experiment

    def replay(self, fusion: str | None = None, options: dict[str, Any] | None = None
               ) -> dict[str, dict[str, float | None]]:
        """Fuse the recorded uploads again; the FM parts' final average accuracy and
        forgetting (mean over clients) as a run reports them."""
        return _replay(self.experiment(fusion, options or {}), self.data["rounds"])


def _replay(experiment: Any, recorded_rounds: list) -> dict[str, dict[str, float | None]]:
    from fclkit.messages import RoundInfo, Upload
    from fclkit.runtime.client import _restricted, accuracy

    stream, fm = experiment.stream, experiment.foundation_model
    rounds_per_task = experiment.config.rounds
    personal: dict[int, tuple[Any, list[int]]] = {}
    rows: dict[str, dict[int, list[list[float]]]] = {"fm": {}, "fm_global": {}}

    def evaluate(state: Any, classes: Any, client: int) -> list[float]:
        fm.load_trainable_state(state)
        forward = _restricted(fm.forward, classes)
        return [accuracy(forward, t.x_test, t.y_test) for t in stream.clients[client].tasks]

    for task, rnd, uploads in recorded_rounds:
        info = RoundInfo(task=task, round=rnd, rounds_per_task=rounds_per_task)
        result = experiment.server.aggregate(info, [Upload.from_state(u) for u in uploads], [])
        for k, download in result.downloads.items():
            if download.fm_state is not None:
                personal[k] = (download.fm_state, sorted(download.fm_classes or ()))
        if info.is_last_round:
            global_fm = experiment.server.global_fm()
            global_state = None if global_fm is None else global_fm.fm_state
            global_classes = None if global_fm is None else list(global_fm.fm_classes or ())
            for client in range(experiment.config.clients):
                if client in personal:
                    rows["fm"].setdefault(client, []).append(evaluate(*personal[client],
                                                                      client))
                if global_state is not None:
                    rows["fm_global"].setdefault(client, []).append(
                        evaluate(global_state, global_classes, client))
    out: dict[str, dict[str, float | None]] = {}
    for model, per_client in rows.items():
        if per_client:
            accs = [average_accuracy(R) for R in per_client.values()]
            forg = [average_forgetting(R) for R in per_client.values()]
            out[model] = {"average_accuracy": sum(accs) / len(accs),
                          "average_forgetting": (None if None in forg
                                                 else sum(forg) / len(forg))}
    return out


def _line(label: str, scores: dict[str, dict[str, float | None]], seconds: float) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v * 100:.1f}"

    cells = "  ".join(f"{m} {pct(s['average_accuracy'])} (forg. {pct(s['average_forgetting'])})"
                      for m, s in scores.items())
    return f"{label:32s} {cells}   [{seconds:.0f} s]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run an experiment and keep its uploads")
    rec.add_argument("out", type=Path, help="recording to write: NAME.safetensors and "
                     "NAME.json (e.g. uploads.safetensors)")
    rec.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                     help="configuration fields, as in a TOML config (e.g. benchmark=langid)")
    rep = sub.add_parser("replay", help="fuse recorded uploads again with other options")
    rep.add_argument("recording", type=Path, help="a recording (NAME.safetensors)")
    rep.add_argument("--try", dest="option_sets", action="append", default=[],
                     metavar="KEY=VALUE,...", help="fusion options to try (repeat the flag "
                     "for more sets); the recorded options are always replayed first")
    rep.add_argument("--fusion", help="another fusion to replay with (e.g. fm-only)")
    args = parser.parse_args(argv)
    try:
        if args.command == "record":
            record(args.out, parse_option_pairs(args.set, "--set"))
            return
        data = load_recording(args.recording)
        recorded = data["config"]
        print(f"recording: {recorded['benchmark']}, seed {recorded['seed']}, "
              f"cl {recorded['cl']}, fusion {recorded['fusion']}; the run gave "
              + ", ".join(f"{m} {v['average_accuracy'] * 100:.1f}"
                          for m, v in data["metrics"]["mean"].items() if m != "small"))
        replayer = Replayer(data)
        other = args.fusion is not None and args.fusion != recorded["fusion"]
        for option_set in ["", *args.option_sets]:
            pairs = [p for p in option_set.split(",") if p.strip()]
            label = option_set or (f"{args.fusion} (defaults)" if other else "(as recorded)")
            started = time.perf_counter()
            scores = replayer.replay(args.fusion, parse_option_pairs(pairs, "option set"))
            print(_line(label, scores, time.perf_counter() - started),
                  flush=True)
    except fclkit.FclkitError as exc:
        sys.exit(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""))


if __name__ == "__main__":
    main()
