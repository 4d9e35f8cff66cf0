"""`anydistill bench ...` subcommands: print a table, or JSON with `--json`, and save a record."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from anydistill.cli_common import fail as _fail
from anydistill.cli_common import quiet_libraries
from anydistill.errors import ConfigError
from anydistill.paths import check_writable_file, disk_full_message, is_disk_full

bench_app = typer.Typer(
    no_args_is_help=True, help="Measure speed, memory and error of anydistill's parts."
)

# The grid: H100 shapes of Llama-3 and Qwen2.5 heads; one CPU-sized shape.
GPU_SHAPES = [
    "8192,128256,2048,4096",
    "16384,151936,896,3584",
    "32768,151936,1536,3584",
]
CPU_SHAPES = ["4096,32000,512,1024"]


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda was requested but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu", "cuda"):
        _fail(f"--device {name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


def _check_out(out: Path | None) -> None:
    """Before any work: a benchmark must not run for minutes and then fail to save."""
    if out is None:
        return
    try:
        check_writable_file(out, "--out")
    except ConfigError as err:
        _fail(str(err))


def _save(out: Path, kind: str, device, settings: dict, records: list[dict]) -> None:
    from anydistill.bench.machine import machine_info

    payload = {
        "benchmark": kind,
        "machine": machine_info(device),
        "settings": settings,
        "records": records,
    }
    text = json.dumps(payload, indent=1) + "\n"
    tmp = out.with_suffix(out.suffix + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(out)  # readers never see half a record file
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            _fail(disk_full_message(out, len(text.encode()), f"{out} is as it was"))
        _fail(f"--out: cannot write {out} ({err.strerror or err}); give another path")


@bench_app.command("loss")
def loss_cmd(
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    shape: Annotated[
        list[str] | None, typer.Option(help="BT,V,Hs,Ht (repeatable); default: a grid")
    ] = None,
    divergence: Annotated[
        list[str] | None,
        typer.Option(help="repeatable; default: every registered divergence"),
    ] = None,
    engine: Annotated[
        list[str] | None,
        typer.Option(help="naive, torch, triton (repeatable); default: naive, torch (+triton)"),
    ] = None,
    compare: Annotated[str, typer.Option(help="also time these, e.g. trl,liger")] = "",
    dtype: Annotated[str, typer.Option(help="input dtype: fp32 or bf16 (default by device)")] = "",
    chunk_size: Annotated[
        int | None, typer.Option(min=1, help="rows per logits block (default: by vocabulary)")
    ] = None,
    warmup: Annotated[int, typer.Option(min=0)] = 1,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of records")] = False,
    out: Annotated[Path | None, typer.Option(help="also write records + machine here")] = None,
) -> None:
    """Forward+backward time, peak extra memory and error vs float64, per engine."""
    _check_out(out)
    import torch

    from anydistill.bench.loss import DIVERGENCE_TERMS, Shape, bench_loss
    from anydistill.bench.table import print_loss_table

    dev = _device(device)
    try:
        shapes = [
            Shape.parse(s) for s in (shape or (GPU_SHAPES if dev.type == "cuda" else CPU_SHAPES))
        ]
    except ValueError as err:
        _fail(str(err))
    dtype = dtype or ("bf16" if dev.type == "cuda" else "fp32")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        _fail(f"--dtype {dtype!r} is not one of fp32, bf16")
    engines = list(
        engine or (["naive", "torch", "triton"] if dev.type == "cuda" else ["naive", "torch"])
    )
    engines += [e.strip() for e in compare.split(",") if e.strip()]
    divergences = list(divergence or DIVERGENCE_TERMS)

    def progress(record: dict) -> None:
        if not as_json:
            state = record.get("error") or f"{record['ms']:.1f} ms"
            typer.echo(
                f"  {record['shape']} {record['divergence']} {record['engine']}: {state}", err=True
            )

    try:
        records = bench_loss(
            shapes,
            divergences,
            engines,
            dev,
            dtypes[dtype],
            warmup,
            repeats,
            chunk_size=chunk_size,
            on_record=progress,
        )
    except ValueError as err:
        _fail(str(err))
    if out is not None:
        settings = {
            "dtype": dtype,
            "warmup": warmup,
            "repeats": repeats,
            "engines": engines,
            "chunk_size": chunk_size,
        }
        _save(out, "loss", dev, settings, records)
    if as_json:
        typer.echo(json.dumps(records, indent=1))
    else:
        print_loss_table(records)


@bench_app.command("step")
def step_cmd(
    teacher: Annotated[str, typer.Option(help="preset name or config.json path")],
    student: Annotated[str, typer.Option(help="preset name or config.json path")],
    batch: Annotated[int, typer.Option(min=1, help="sequences per step")] = 8,
    seq_len: Annotated[int, typer.Option(min=2, help="tokens per sequence")] = 2048,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="bf16 (teacher weights + autocast) or fp32; default by device")
    ] = "",
    engine: Annotated[
        str, typer.Option(help="our loss engine: torch, triton, naive; default triton on CUDA")
    ] = "",
    divergence: Annotated[
        str, typer.Option(help="a registered divergence: fkl, rkl, jsd (beta 0.5), ...")
    ] = "jsd",
    chunk_size: Annotated[
        int | None, typer.Option(min=1, help="rows per logits block (default: by vocabulary)")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="timed steps")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="untimed steps first")] = 2,
    compare: Annotated[str, typer.Option(help="also time these losses, e.g. trl,liger")] = "",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing")] = False,
    peak_tflops: Annotated[
        float | None, typer.Option(help="for MFU; default 989 (H100/H200 bf16) on CUDA")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of records")] = False,
    out: Annotated[Path | None, typer.Option(help="also write records + machine here")] = None,
) -> None:
    """Time full distillation steps: teacher forward, student forward/backward, loss, AdamW."""
    _check_out(out)
    quiet_libraries()
    from anydistill.bench.presets import resolve_model
    from anydistill.bench.step import H100_BF16_TFLOPS, StepSettings, bench_step
    from anydistill.bench.table import print_step_table
    from anydistill.errors import AnydistillError

    try:
        teacher_spec = resolve_model(teacher, "--teacher")
        student_spec = resolve_model(student, "--student")
    except ValueError as err:
        _fail(str(err))
    dev = _device(device)
    cuda = dev.type == "cuda"
    settings = StepSettings(
        batch=batch,
        seq_len=seq_len,
        steps=steps,
        warmup=warmup,
        divergence=divergence,
        engine=engine or ("triton" if cuda else "torch"),
        chunk_size=chunk_size,
        dtype=dtype or ("bf16" if cuda else "fp32"),
        gradient_checkpointing=gradient_checkpointing,
        peak_tflops=peak_tflops if peak_tflops is not None or not cuda else H100_BF16_TFLOPS,
    )
    variants = ["anydistill", *(v.strip() for v in compare.split(",") if v.strip())]

    def progress(record: dict) -> None:
        if not as_json:
            state = record.get("error") or f"{record['step_ms']:.1f} ms/step"
            typer.echo(f"  {record['variant']}: {state}", err=True)

    try:
        records = bench_step(teacher_spec, student_spec, settings, dev, variants, progress)
    except (ValueError, AnydistillError) as err:
        _fail(str(err))
    if out is not None:
        from dataclasses import asdict

        extra = {"teacher_config": teacher_spec.config, "student_config": student_spec.config}
        _save(out, "step", dev, {**asdict(settings), "variants": variants, **extra}, records)
    if as_json:
        typer.echo(json.dumps(records, indent=1))
    else:
        print_step_table(records)


@bench_app.command("cache")
def cache_cmd(
    teacher: Annotated[
        Path | None, typer.Option(help="teacher model dir (default: the fast demo's teacher)")
    ] = None,
    k: Annotated[list[int] | None, typer.Option(help="repeatable; default 8, 32, 128")] = None,
    value_bits: Annotated[int, typer.Option(help="8, 12, 16 or 32")] = 12,
    samples: Annotated[int, typer.Option(min=8)] = 600,
    steps: Annotated[int, typer.Option(min=1, help="training steps per throughput run")] = 20,
    student_hidden: Annotated[int, typer.Option(min=8)] = 48,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of records")] = False,
    out: Annotated[Path | None, typer.Option(help="also write records + machine here")] = None,
) -> None:
    """Bytes/token, held-out KL and write/training speed of the teacher cache, per k."""
    _check_out(out)
    quiet_libraries()
    import tempfile

    import torch

    from anydistill.bench.cache_bench import bench_cache
    from anydistill.errors import AnydistillError

    if teacher is not None and not (teacher / "config.json").is_file():
        _fail(f"--teacher {teacher} is not a model directory (no config.json)")
    ks = list(k or [8, 32, 128])
    try:
        with tempfile.TemporaryDirectory(prefix="anydistill-bench-cache-") as work:
            records = bench_cache(
                teacher,
                ks,
                Path(work),
                value_bits,
                samples,
                steps,
                student_hidden=student_hidden,
                say=(lambda _: None) if as_json else (lambda m: typer.echo(f"  {m}", err=True)),
            )
    except AnydistillError as err:
        _fail(str(err))
    if out is not None:
        settings = {
            "value_bits": value_bits,
            "samples": samples,
            "steps": steps,
            "student_hidden": student_hidden,
            "teacher": str(teacher or "demo-fast"),
        }
        _save(out, "cache", torch.device("cpu"), settings, records)
    if as_json:
        typer.echo(json.dumps(records, indent=1))
        return
    for r in records:
        typer.echo(
            f"k={r['k']}: {r['bytes_per_token']} B/token, KL {r['kl_nats']:.4f} nats, "
            f"write {r['write_tokens_per_s']:.0f} tok/s, train {r['train_tokens_per_s_cache']:.0f}"
            f" tok/s from cache vs {r['train_tokens_per_s_online']:.0f} online"
        )


@bench_app.command("generate")
def generate_cmd(
    model: Annotated[list[str], typer.Option(help="hub id or local model directory (repeatable)")],
    prompt_len: Annotated[
        str, typer.Option(help="comma-separated prompt lengths in tokens")
    ] = "1024,4096,16384",
    new_tokens: Annotated[int, typer.Option(help="greedy tokens generated per prompt")] = 64,
    batch: Annotated[int, typer.Option(help="prompts per generation")] = 1,
    dtype: Annotated[
        str, typer.Option(help="float32 or bfloat16 weights; default bfloat16 on CUDA")
    ] = "",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    repeats: Annotated[int, typer.Option(help="timed runs per case (after one untimed)")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of records")] = False,
    save: Annotated[
        Path | None, typer.Option(help="also write records + machine + date here")
    ] = None,
) -> None:
    """Prefill time, decode tokens/s, peak memory and cache bytes of greedy generation."""
    from anydistill.errors import AnydistillError

    if save is not None:
        try:
            check_writable_file(save, "--save")
        except ConfigError as err:
            _fail(str(err))
    quiet_libraries()
    from anydistill.bench.generate import (
        GenerateSettings,
        bench_generate,
        check_models,
        dtype_name,
        parse_lengths,
        print_generate_table,
        save_generate,
    )

    try:
        dev = _device(device)
        settings = GenerateSettings(
            prompt_lens=parse_lengths(prompt_len),
            new_tokens=new_tokens,
            batch=batch,
            dtype=dtype_name(dtype, dev),
            repeats=repeats,
        )
        settings.check()
        check_models(model)
    except AnydistillError as err:
        _fail(str(err))

    def progress(record: dict) -> None:
        if not as_json:
            state = record.get("skipped") or record.get("error")
            if state is None:
                state = f"prefill {record['prefill_s']:.3f} s, cache {record['cache_bytes']} B"
            typer.echo(f"  {record['model']} {record['prompt_len']}: {state}", err=True)

    try:
        records = bench_generate(model, settings, dev, progress)
        if save is not None:
            save_generate(save, model, settings, dev, records)
    except AnydistillError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(records, indent=1))
    else:
        print_generate_table(records)
