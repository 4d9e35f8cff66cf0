"""The `anydistill` command: one thin function per subcommand.

User errors (AnydistillError, FileNotFoundError from the report) print one sentence to
stderr and exit with status 2; bugs still show a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from anydistill.align.cli import align_cmd
from anydistill.bench.cli import bench_app
from anydistill.cli_common import OneLineErrors
from anydistill.cli_common import fail as _fail
from anydistill.cli_common import quiet_libraries as _quiet_libraries
from anydistill.errors import AnydistillError

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distill any teacher language model into any student.",
)

app.add_typer(bench_app, name="bench")
app.command("align")(align_cmd)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML recipe")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
) -> None:
    """Distill a student as the recipe says (resumes from the last checkpoint)."""
    _quiet_libraries()
    from anydistill.config import load_config
    from anydistill.train.loop import train as run_train

    try:
        cfg = load_config(config, overrides or [])
        run_dir = run_train(cfg)
    except AnydistillError as err:
        _fail(str(err))
    except KeyboardInterrupt as err:  # a stop after a saved step says where; one in set-up
        why = str(err) or "interrupted before training began; the run directory is as it was"
        typer.echo(f"stopped: {why}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"run directory: {run_dir}")


@app.command()
def cache(
    config: Annotated[Path, typer.Argument(help="YAML recipe (its teacher and data are used)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    out: Annotated[Path, typer.Option(help="cache directory to write (or finish)")] = Path(
        "teacher-cache"
    ),
    k: Annotated[int, typer.Option(help="top-k token ids kept per position")] = 32,
    value_bits: Annotated[int, typer.Option(help="bits per log-prob: 8, 12, 16 or 32")] = 12,
    samples_per_shard: Annotated[int, typer.Option(min=1)] = 256,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
) -> None:
    """Run the teacher once over the training data and store its top-k for later runs."""
    _quiet_libraries()
    from anydistill.config import load_config
    from anydistill.teachers.cache.command import CacheSettings, write_cache

    settings = CacheSettings(
        k=k, value_bits=value_bits, samples_per_shard=samples_per_shard, batch_size=batch_size
    )
    try:
        cfg = load_config(config, overrides or [])
        manifest = write_cache(cfg, out, settings)
    except AnydistillError as err:
        _fail(str(err))
    typer.echo(f"teacher cache: {manifest.parent}")


@app.command()
def generate(
    config: Annotated[Path, typer.Argument(help="YAML recipe: its data, teacher and generate")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    out: Annotated[
        Path, typer.Option(help="folder for traces.jsonl and its card (or to finish)")
    ] = Path("traces"),
) -> None:
    """Sample reasoning traces from the teacher, verify, filter, deduplicate, decontaminate."""
    _quiet_libraries()
    from anydistill.config import load_config
    from anydistill.traces.pipeline import generate_traces

    try:
        cfg = load_config(config, overrides or [])
        made = generate_traces(cfg, out)
    except AnydistillError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        typer.echo(f"stopped: the finished chunks are kept in {out}; rerun to continue", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"traces: {made.traces} ({made.rows} rows, {made.prompts} prompts; card.md beside it)"
    )


@app.command()
def prune(
    config: Annotated[
        Path, typer.Argument(help="YAML recipe: its teacher, data and student.from_teacher.prune")
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    out: Annotated[Path, typer.Option(help="directory for the pruned model")] = Path("pruned"),
) -> None:
    """Prune the recipe's teacher (Minitron: importances from its data) without training."""
    _quiet_libraries()
    from anydistill.config import load_config
    from anydistill.train.prune import prune_to_dir

    try:
        cfg = load_config(config, overrides or [])
        saved = prune_to_dir(cfg, out)
    except AnydistillError as err:
        _fail(str(err))
    typer.echo(f"pruned model: {saved}")


@app.command()
def convert(
    config: Annotated[
        Path,
        typer.Argument(help="YAML recipe: its teacher, data and student.from_teacher.convert"),
    ],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    out: Annotated[Path, typer.Option(help="directory for the converted model")] = Path(
        "converted"
    ),
) -> None:
    """Convert the recipe's teacher into a hybrid (Gated DeltaNet or Mamba-2 layers beside
    the kept attention) without training."""
    _quiet_libraries()
    from anydistill.config import load_config
    from anydistill.train.convert import convert_to_dir

    try:
        cfg = load_config(config, overrides or [])
        saved = convert_to_dir(cfg, out)
    except AnydistillError as err:
        _fail(str(err))
    typer.echo(f"converted model: {saved}")


@app.command("eval")
def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory made by `anydistill train`")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    max_batches: Annotated[int | None, typer.Option(min=1, help="limit eval batches")] = None,
    task: Annotated[
        str | None,
        typer.Option(help="task file/folder (GSM8K, SVAMP, MATH-500, HumanEval, jsonl) to score"),
    ] = None,
    max_records: Annotated[
        int | None, typer.Option(min=1, help="score the first N task records")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    lm_eval: Annotated[
        str | None, typer.Option("--lm-eval", help="lm-eval harness tasks, comma separated")
    ] = None,
    lm_eval_limit: Annotated[
        int | None, typer.Option(min=1, help="examples per lm-eval task")
    ] = None,
    texts: Annotated[
        str | None, typer.Option(help="text file: bits/byte of each model with its own tokenizer")
    ] = None,
) -> None:
    """Held-out ce, perplexity, bits/byte, teacher KL and agreement of a run's final student;
    task scores with --task, standard benchmarks with --lm-eval."""
    _quiet_libraries()
    from anydistill.eval.run import evaluate_run

    try:
        result = evaluate_run(
            run_dir,
            max_batches=max_batches,
            task=task,
            max_records=max_records,
            max_new_tokens=max_new_tokens,
            lm_eval=lm_eval,
            lm_eval_limit=lm_eval_limit,
            texts=texts,
        )
    except AnydistillError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    from anydistill.eval.table import print_eval

    print_eval(result)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """(Re)write RUN_DIR/report.html and its plots from metrics.jsonl."""
    from anydistill.report import write_report

    try:
        path = write_report(run_dir)
    except (FileNotFoundError, AnydistillError) as err:
        _fail(str(err))
    typer.echo(f"report: {path}")


@app.command()
def demo(
    fast: Annotated[bool, typer.Option("--fast", help="the under-2-minute version")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the table as JSON")] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="where runs go (default: a temp dir)")
    ] = None,
) -> None:
    """Offline, CPU: train a tiny teacher, then a student with and without distillation."""
    _quiet_libraries()
    from anydistill.demo.run import print_table, run_demo

    try:
        table = run_demo(fast=fast, workdir=workdir, quiet=as_json)
    except AnydistillError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(table, indent=1))
    else:
        print_table(table)


@app.command()
def speculate(
    target: Annotated[str, typer.Option(help="target model: run dir, model dir or hub id")],
    drafter: Annotated[str, typer.Option(help="drafter model: run dir, model dir or hub id")],
    data: Annotated[str, typer.Option(help="prompts file (prompt/question/text column)")],
    gamma: Annotated[int, typer.Option(help="draft tokens per target call (1..16)")] = 4,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    max_prompts: Annotated[int, typer.Option(min=1)] = 32,
    column: Annotated[str | None, typer.Option(help="prompt column name")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    save: Annotated[
        bool, typer.Option("--save", help="write speculate.json into the drafter's run dir")
    ] = False,
) -> None:
    """Speculative decoding with lossless verification: acceptance, tokens/call, speedup."""
    _quiet_libraries()
    from anydistill.eval.speculate_cmd import check_save, run_speculate

    try:
        if save:  # before the models load: a result must not be lost to an unwritable run
            check_save(drafter)
        result = run_speculate(
            target,
            drafter,
            data,
            column=column,
            gamma=gamma,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            max_prompts=max_prompts,
            seed=seed,
            device=device,
        )
        if save:
            from anydistill.eval.speculate_cmd import save_speculation

            save_speculation(drafter, target, result)
    except AnydistillError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    for key in ("acceptance_rate", "mean_accepted", "speedup", "greedy_identical"):
        typer.echo(f"{key}: {result[key]}")
    rates = ", ".join("-" if r is None else f"{r:.2f}" for r in result["acceptance_by_position"])
    typer.echo(f"acceptance by draft position: {rates}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
