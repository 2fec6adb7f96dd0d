"""The ``fclkit`` command line: a thin layer over the Python API.

Known errors print one line (and a hint); the traceback appears only with
``--debug`` (or ``FCLKIT_DEBUG=1``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .config import field_help
from .errors import FclkitError

app = typer.Typer(
    name="fclkit",
    help="Federated Continual Learning with large-small model collaboration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fail(exc: BaseException, debug: bool) -> None:
    if debug or os.environ.get("FCLKIT_DEBUG"):
        raise exc
    err = _console(stderr=True)
    err.print(f"[bold red]error:[/bold red] {exc}", markup=True, soft_wrap=True)
    hint = getattr(exc, "hint", None)
    if hint:
        err.print(f"[dim]hint: {hint}[/dim]", soft_wrap=True)
    raise typer.Exit(code=1)


def _help(field: str) -> str:
    return field_help(field)


def _opt_help(component: str, several: bool = False) -> str:
    one = "; NAME.KEY=VALUE sets it for one of them" if several else ""
    return (f"set an option of the {component}, the value read as TOML{one} (repeatable; "
            "`fclkit plugins --options` lists them)")


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML file with the experiment (flags override it)")] = None,
    cl: Annotated[str | None, typer.Option(help=_help("cl"))] = None,
    fusion: Annotated[str | None, typer.Option(help=_help("fusion"))] = None,
    client_models: Annotated[str | None, typer.Option(
        "--client-models", help=_help("client_models"))] = None,
    fm: Annotated[str | None, typer.Option(help=_help("fm"))] = None,
    benchmark: Annotated[str | None, typer.Option(help=_help("benchmark"))] = None,
    engine: Annotated[str | None, typer.Option(help=_help("engine"))] = None,
    clients: Annotated[int | None, typer.Option(help=_help("clients"))] = None,
    tasks: Annotated[int | None, typer.Option(help=_help("tasks"))] = None,
    rounds: Annotated[int | None, typer.Option(help=_help("rounds"))] = None,
    epochs: Annotated[int | None, typer.Option(help=_help("epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_help("batch_size"))] = None,
    lr: Annotated[float | None, typer.Option(help=_help("lr"))] = None,
    partition: Annotated[str | None, typer.Option(help=_help("partition"))] = None,
    public_fraction: Annotated[float | None, typer.Option(help=_help("public_fraction"))] = None,
    public_labels: Annotated[int | None, typer.Option(help=_help("public_labels"))] = None,
    dirichlet_alpha: Annotated[float | None, typer.Option(help=_help("dirichlet_alpha"))] = None,
    seed: Annotated[int | None, typer.Option(help=_help("seed"))] = None,
    threads: Annotated[int | None, typer.Option(help=_help("threads"))] = None,
    guidance_weight: Annotated[float | None, typer.Option(
        help=_help("guidance_weight"))] = None,
    guidance_examples: Annotated[str | None, typer.Option(
        help=_help("guidance_examples"))] = None,
    loggers: Annotated[str | None, typer.Option(help=_help("loggers"))] = None,
    device: Annotated[str | None, typer.Option(help=_help("device"))] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=_help("output"))] = None,
    name: Annotated[str | None, typer.Option(help=_help("name"))] = None,
    cl_opt: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help=_opt_help("strategy"))] = None,
    fusion_opt: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help=_opt_help("fusion"))] = None,
    model_opt: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help=_opt_help("small models", several=True))] = None,
    fm_opt: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help=_opt_help("foundation model"))] = None,
    benchmark_opt: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help=_opt_help("benchmark"))] = None,
    engine_opt: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help=_opt_help("engine"))] = None,
    logger_opt: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help=_opt_help("loggers", several=True))] = None,
    resume: Annotated[Path | None, typer.Option(
        help="continue a stopped run from its latest checkpoint, in its own folder "
        "(its config.toml is used; other options are not allowed)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    debug: Annotated[bool, typer.Option(help="show tracebacks of errors")] = False,
) -> None:
    """Run an experiment (offline default: digits, 3 clients, 5 tasks).

    Component options: --cl-opt ewc_lambda=100 (repeatable), likewise --fusion-opt,
    --model-opt, --fm-opt, --benchmark-opt, --engine-opt, --logger-opt
    (NAME.key=value sets one component's option, e.g. --model-opt mlp.hidden=64).
    """
    from .config import load_config, parse_option_pairs

    try:
        overrides: dict[str, Any] = {
            "cl": cl, "fusion": fusion, "client_models": client_models, "fm": fm,
            "benchmark": benchmark, "engine": engine, "clients": clients, "tasks": tasks,
            "rounds": rounds, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "partition": partition, "dirichlet_alpha": dirichlet_alpha,
            "public_fraction": public_fraction, "public_labels": public_labels, "seed": seed,
            "threads": threads, "guidance_weight": guidance_weight,
            "guidance_examples": guidance_examples, "loggers": loggers,
            "device": device, "output": str(output) if output is not None else None,
            "name": name,
        }
        for table, pairs, flag in (
            ("cl_options", cl_opt, "--cl-opt"), ("fusion_options", fusion_opt, "--fusion-opt"),
            ("model_options", model_opt, "--model-opt"), ("fm_options", fm_opt, "--fm-opt"),
            ("benchmark_options", benchmark_opt, "--benchmark-opt"),
            ("engine_options", engine_opt, "--engine-opt"),
            ("logger_options", logger_opt, "--logger-opt"),
        ):
            if pairs:
                overrides[table] = parse_option_pairs(pairs, flag)
        from .progress import Reporter, RichReporter
        from .runtime.experiment import run as run_experiment

        reporter = Reporter() if quiet else RichReporter()
        if resume is not None:
            given = [k for k, v in overrides.items() if v is not None]
            if config is not None or given:
                raise FclkitError(
                    "--resume continues a run with its own configuration; it cannot be "
                    f"combined with {', '.join(['--config'] * (config is not None) + given)}")
            result = run_experiment(load_config(resume / "config.toml"), reporter=reporter,
                                    resume=resume)
        else:
            result = run_experiment(load_config(config, overrides), reporter=reporter)
    except FclkitError as exc:
        _fail(exc, debug)
        return
    except KeyboardInterrupt:
        _console(stderr=True).print("[yellow]interrupted[/yellow]: partial results were kept")
        raise typer.Exit(code=130) from None
    from .summary import print_summary

    print_summary(result.metrics, result.run_dir, console=_console())


@app.command()
def plugins(
    options: Annotated[bool, typer.Option(
        "--options", help="also list every component's options")] = False,
) -> None:
    """List every installed component by kind, with the plugin that provides it."""
    from rich.table import Table

    from .config import options_help
    from .plugins import build_registry

    registry = build_registry()
    console = _console()
    table = Table(title="fclkit components", title_justify="left")
    for col in ("kind", "name", "plugin", "distribution", "description"):
        table.add_column(col)
    for e in registry.all():
        dist = f"{e.distribution} {e.version}" if e.distribution else "-"
        table.add_row(e.kind.replace("_", " "), e.name, e.plugin, dist,
                      getattr(e.cls, "description", ""))
    console.print(table)
    if options:
        for e in registry.all():
            rows = options_help(e.cls.Options)
            if not rows:
                continue
            opt = Table(title=f"{e.kind.replace('_', ' ')} {e.name}: options",
                        title_justify="left")
            for col in ("option", "default", "help"):
                opt.add_column(col)
            for key, default, text in rows:
                opt.add_row(key, repr(default), text)
            console.print(opt)
    for b in registry.broken:
        console.print(f"[red]broken plugin[/red] {b.plugin!r}"
                      f"{f' ({b.distribution})' if b.distribution else ''}: {b.error}")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="one or more results folders")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="where to write the report (default: RUN_DIR/report for one "
        "run, ./report-TIME for several)")] = None,
    debug: Annotated[bool, typer.Option(help="show tracebacks of errors")] = False,
) -> None:
    """Draw pictures (accuracy heatmaps, curves, communication) and a Markdown summary."""
    from .report import make_report

    try:
        out = make_report(run_dirs, output)
    except FclkitError as exc:
        _fail(exc, debug)
        return
    _console().print(f"report: [bold]{out / 'report.md'}[/bold]")


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="where to write the config")] = Path("exp.toml"),
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Write a commented example TOML configuration (every field, with its help)."""
    from .config import commented_toml

    if path.exists() and not force:
        _fail(FclkitError(f"{path} already exists", hint="pass --force to overwrite it"),
              False)
    path.write_text(commented_toml(), encoding="utf-8")
    _console().print(f"wrote {path}; run it with: fclkit run --config {path}")


def _version_callback(value: bool) -> None:
    if value:
        print(f"fclkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version_callback, is_eager=True, help="print the version")] = False,
) -> None:
    """Federated Continual Learning with large-small model collaboration."""


def main() -> None:
    app(prog_name="fclkit")


if __name__ == "__main__":  # pragma: no cover
    main()
