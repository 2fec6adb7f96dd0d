"""The ``fclkit`` command line: a thin layer over the Python API.

Known errors print one line (and a hint); the traceback appears only with
``--debug`` (or ``FCLKIT_DEBUG=1``).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .config import field_help
from .errors import FclkitDeprecationWarning, FclkitError

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


def escape(text: str) -> str:
    """``text`` shown as it is (rich would read ``[fusion_options]`` as markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _one_line(text: str) -> str:
    """``text`` on one line (a message with line breaks would read as several errors)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _fail(exc: BaseException, debug: bool) -> None:
    if debug or os.environ.get("FCLKIT_DEBUG"):
        raise exc
    err = _console(stderr=True)
    err.print(f"[bold red]error:[/bold red] {escape(_one_line(str(exc)))}", markup=True,
              soft_wrap=True)
    hint = getattr(exc, "hint", None)
    if hint:
        err.print(f"[dim]hint: {escape(_one_line(str(hint)))}[/dim]", soft_wrap=True)
    raise typer.Exit(code=1)


def _help(field: str) -> str:
    return field_help(field)


def _opt_help(component: str, several: bool = False) -> str:
    one = "; NAME.KEY=VALUE sets it for one of them" if several else ""
    return (f"set an option of the {component}, the value read as TOML{one} (repeatable; "
            "`fclkit plugins --options` lists them)")


def _kind_parameters() -> list[inspect.Parameter]:
    """Two flags per component kind (:data:`fclkit.kinds.KINDS`): ``--cl NAME`` and
    ``--cl-opt KEY=VALUE``."""
    from . import kinds

    params = []
    for kind in kinds.KINDS:
        params.append(inspect.Parameter(
            kind.field, inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[str | None, typer.Option(kind.flag, help=_help(kind.field))]))
        params.append(inspect.Parameter(
            kind.options_field, inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[list[str] | None, typer.Option(
                kind.options_flag, metavar="KEY=VALUE",
                help=_opt_help(kind.label + ("s" if kind.several else ""), kind.several))]))
    return params


def _with_kind_flags(command: Any) -> Any:
    """``command`` with the component kinds' flags inserted before its own."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    command.__signature__ = signature.replace(
        parameters=[own[0], *_kind_parameters(), *own[1:]])  # after --config
    return command


def run(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="TOML file with the experiment (flags override it)")] = None,
    *,
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
    classes_per_client: Annotated[int | None, typer.Option(
        help=_help("classes_per_client"))] = None,
    scenario: Annotated[str | None, typer.Option(help=_help("scenario"))] = None,
    domain_transform: Annotated[str | None, typer.Option(help=_help("domain_transform"))] = None,
    rotation_angle: Annotated[float | None, typer.Option(help=_help("rotation_angle"))] = None,
    class_order: Annotated[str | None, typer.Option(help=_help("class_order"))] = None,
    participation: Annotated[float | None, typer.Option(help=_help("participation"))] = None,
    join_tasks: Annotated[str | None, typer.Option(
        metavar="T1,T2,...", help=_help("join_tasks"))] = None,
    seed: Annotated[int | None, typer.Option(help=_help("seed"))] = None,
    threads: Annotated[int | None, typer.Option(help=_help("threads"))] = None,
    device: Annotated[str | None, typer.Option(help=_help("device"))] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=_help("output"))] = None,
    name: Annotated[str | None, typer.Option(help=_help("name"))] = None,
    cache_dir: Annotated[str | None, typer.Option(
        metavar="DIR", help=_help("cache_dir"))] = None,
    guidance_weight: Annotated[float | None, typer.Option(
        hidden=True, help="deprecated: --fusion-opt guidance_weight=W")] = None,
    guidance_examples: Annotated[str | None, typer.Option(
        hidden=True, help="deprecated: --fusion-opt guidance_examples=MODE")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="continue a stopped run from its latest checkpoint, in its own folder "
        "(its config.toml is used; other options are not allowed)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    debug: Annotated[bool, typer.Option(help="show tracebacks of errors")] = False,
    **components: Any,
) -> None:
    """Run an experiment (offline default: digits, 3 clients, 5 tasks).

    Component options: --cl-opt ewc_lambda=100 (repeatable), likewise --fusion-opt,
    --model-opt, --fm-opt, --benchmark-opt, --engine-opt, --logger-opt
    (NAME.key=value sets one component's option, e.g. --model-opt mlp.hidden=64).
    """
    from . import kinds
    from .config import FIELDS, load_config, parse_option_pairs

    # every parameter named like a configuration field is an override (the flag list
    # above is the only place that names them)
    given = dict(locals())
    try:
        overrides: dict[str, Any] = {f: v for f, v in given.items() if f in FIELDS}
        overrides["output"] = str(output) if output is not None else None
        overrides["guidance_weight"] = guidance_weight
        overrides["guidance_examples"] = guidance_examples
        for kind in kinds.KINDS:
            overrides[kind.field] = components.get(kind.field)
            pairs = components.get(kind.options_field)
            if pairs:
                overrides[kind.options_field] = parse_option_pairs(pairs, kind.options_flag)
        from .progress import Reporter, RichReporter
        from .runtime.lifecycle import run as run_experiment

        reporter = Reporter() if quiet else RichReporter()
        if resume is not None:
            named = [k for k, v in overrides.items() if v is not None]
            if config is not None or named:
                raise FclkitError(
                    "--resume continues a run with its own configuration; it cannot be "
                    f"combined with {', '.join(['--config'] * (config is not None) + named)}")
            result = run_experiment(None, reporter=reporter, resume=resume)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FclkitDeprecationWarning)
                loaded = load_config(config, overrides)
            for w in caught:
                _console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(str(w.message))}",
                                            soft_wrap=True)
            result = run_experiment(loaded, reporter=reporter)
    except FclkitError as exc:
        _fail(exc, debug)
        return
    except KeyboardInterrupt:
        _console(stderr=True).print("[yellow]interrupted[/yellow]: partial results were kept")
        raise typer.Exit(code=130) from None
    from .summary import print_summary

    print_summary(result.metrics, result.run_dir, console=_console())


app.command()(_with_kind_flags(run))


def _print_table(console: Any, title: str, columns: tuple[str, ...],
                 rows: Sequence[Sequence[str]], whole: int) -> None:
    """A table whose first ``whole`` columns (names, kinds) are never cut or wrapped, so
    ``fclkit plugins | grep NAME`` finds every name at any terminal width or through a
    pipe: the other columns wrap, and the table is wider than the terminal rather than
    cut a name."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    widths = [max([len(col), *(len(row[i]) for row in rows)]) for i, col in
              enumerate(columns)]
    for i, col in enumerate(columns):
        if i < whole:
            table.add_column(col, no_wrap=True, min_width=widths[i])
        else:
            widths[i] = min(widths[i], 12)
            table.add_column(col, overflow="fold", min_width=widths[i])
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    needed = sum(widths) + 3 * len(columns) + 1  # each column's padding and border
    if console.width < needed:  # a console of its own: print() would cap the width
        from rich.console import Console

        console = Console(width=needed, highlight=False)
    console.print(table, crop=False)


@app.command()
def plugins(
    options: Annotated[bool, typer.Option(
        "--options", help="also list every component's options")] = False,
) -> None:
    """List every installed component by kind, with the plugin that provides it."""
    from .config import options_help
    from .plugins import build_registry

    registry = build_registry()
    console = _console()
    rows = [(e.kind.replace("_", " "), e.name, e.plugin,
             f"{e.distribution} {e.version}" if e.distribution else "-",
             str(getattr(e.cls, "description", ""))) for e in registry.all()]
    _print_table(console, "fclkit components",
                 ("kind", "name", "plugin", "distribution", "description"), rows, whole=4)
    if options:
        for e in registry.all():
            opt_rows = [(key, repr(default), str(text))
                        for key, default, text in options_help(e.cls.Options)]
            if opt_rows:
                _print_table(console, f"{e.kind.replace('_', ' ')} {e.name}: options",
                             ("option", "default", "help"), opt_rows, whole=1)
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


cache_app = typer.Typer(
    name="cache", no_args_is_help=True,
    help="The on-disk cache of foundation-model features (run setting cache_dir).")
app.add_typer(cache_app)

_CACHE_DIR_HELP = ("the cache folder (default: the run default, $FCLKIT_CACHE_DIR, else "
                   "$XDG_CACHE_HOME/fclkit/features, else ~/.cache/fclkit/features)")


def _cache_root(cache_dir: str | None) -> Path | None:
    from .feature_cache import resolve_cache_dir

    return resolve_cache_dir(cache_dir)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


_IDENTITY_BASE = ("fm", "class", "weights", "torch", "device", "input", "source")


@cache_app.command("info")
def cache_info(
    cache_dir: Annotated[str | None, typer.Option(metavar="DIR", help=_CACHE_DIR_HELP)] = None,
) -> None:
    """Show the cache folder, its size and the entries per backbone identity."""
    import time

    from .feature_cache import folder_info

    root = _cache_root(cache_dir)
    console = _console()
    if root is None:
        console.print("the disk feature cache is off (cache_dir = none)")
        return
    rows = folder_info(root)
    total = sum(r["bytes"] for r in rows)
    console.print(f"folder: {escape(str(root))}{'' if root.is_dir() else ' (not created yet)'}")
    console.print(f"size: {_size(total)} in {sum(r['shards'] for r in rows)} shards, "
                  f"{sum(r['entries'] for r in rows)} feature vectors, "
                  f"{len(rows)} backbone identit{'y' if len(rows) == 1 else 'ies'}")
    if not rows:
        return
    for r in rows:  # one line per identity (greppable at any terminal width)
        ident = r["identity"]
        opts = " ".join(f"{k}={v}" for k, v in ident.items() if k not in _IDENTITY_BASE
                        and not k.endswith("_hash"))
        used = (time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_used"]))
                if r["last_used"] else "-")
        damaged = f" (+{r['damaged']} damaged)" if r["damaged"] else ""
        console.print(escape(
            f"  {r['digest'][:12]}  {ident.get('fm', '?')}  weights "
            f"{str(ident.get('weights', '?'))[:8]}  {opts}  {r['entries']} entries  "
            f"{r['shards']} shards{damaged}  {_size(r['bytes'])}  last used {used}"),
            soft_wrap=True)


@cache_app.command("clear")
def cache_clear(
    cache_dir: Annotated[str | None, typer.Option(metavar="DIR", help=_CACHE_DIR_HELP)] = None,
) -> None:
    """Delete every cached feature (only the files the cache wrote)."""
    from .feature_cache import clear_folder

    root = _cache_root(cache_dir)
    if root is None:
        _console().print("the disk feature cache is off (cache_dir = none): nothing to clear")
        return
    files, nbytes = clear_folder(root)
    _console().print(f"removed {files} files ({_size(nbytes)}) from {escape(str(root))}")


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
