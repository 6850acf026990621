"""`desta eval`: run a benchmark (inference + scoring), rescore predictions without the model, build reports, and
the quick retention check. Heavy imports happen inside the commands so `desta --help` stays fast."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from desta_audio import zoo
from desta_audio.cli_logging import setup_logging

app = typer.Typer(help="Evaluate on MMAU, Dynamic-SUPERB, SAKURA, Speech-IFEval and VoiceBench; rescore; report.",
                  no_args_is_help=True)
logger = logging.getLogger(__name__)


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _server_errors() -> tuple[type[Exception], ...]:
    """A judge or served model that still fails after the client's retries."""
    try:
        from openai import APIError
    except ImportError:
        return ()
    return (APIError,)


DATA_FORMAT_HINT = "--data must be the benchmark's own release format (see the README's evaluation section)"


@contextmanager
def _user_errors(record_hint: str = DATA_FORMAT_HINT) -> Iterator[None]:
    """Errors caused by the user's data, files, settings or servers end in a one-line message, not a traceback."""
    from desta_audio.eval.judge import JudgeCacheMiss, JudgeError

    try:
        yield
    except JudgeCacheMiss as error:
        _fail(str(error))
    except JudgeError as error:
        _fail(f"{error} (the verdicts already given stay in the judge cache: run the same command again to ask "
              "only for the rest)")
    except _server_errors() as error:
        _fail(f"{type(error).__name__}: {error} (finished predictions and verdicts are kept: run again to resume)")
    except KeyError as error:
        _fail(f"a record has no {error} field; {record_hint}")
    except (OSError, ValueError) as error:  # FileNotFoundError, ConnectionError, AudioError, RecordError...
        _fail(str(error))


class MissingOutputs(str, Enum):
    wrong = "wrong"
    skip = "skip"


class EmptyLabel(str, Enum):
    match = "match"
    wrong = "wrong"


class ParagraphSplit(str, Enum):
    newline = "newline"
    blank_lines = "blank_lines"


class SystemKind(str, Enum):
    desta = "desta"
    backbone = "backbone"
    cascade = "cascade"
    api = "api"
    api_text = "api-text"


def _judge(spec: Optional[str], cache: Optional[Path], base_url: Optional[str], key_env: str, default_model: str,
           out_dir: Path):
    from desta_audio.eval.judge import build_judge

    if spec in (None, "none"):
        return None
    if spec == "openai":
        spec = f"openai:{default_model}"
    try:
        return build_judge(spec, cache_path=cache or out_dir / "judge-cache.jsonl", base_url=base_url,
                           api_key_env=key_env, model_name=default_model)
    except RuntimeError as error:  # e.g. the API key variable is not set
        raise ValueError(str(error)) from None


def _system(kind: SystemKind, model: str, asr: str, base_url: Optional[str], concurrency: int):
    import os

    from desta_audio.eval import systems

    if kind in (SystemKind.api, SystemKind.api_text):
        from desta_audio.eval.remote import OpenAIChatSystem

        if not base_url:
            raise typer.BadParameter(f"--system {kind.value} needs --base-url (e.g. http://localhost:8000/v1)")
        return OpenAIChatSystem(base_url, model, api_key=os.environ.get(API_KEY_ENV), concurrency=concurrency,
                                text_only=kind is SystemKind.api_text)
    if kind is SystemKind.desta:
        return systems.load_desta(model)
    if kind is SystemKind.cascade:
        return systems.Cascade.from_packaged(whisper=asr, llm=model)

    path = Path(model) if Path(model).is_dir() else zoo.resolve_component(model)
    return systems.TextBackbone.from_path(path)


def _score_file(predictions: Path, judge: Any, options: dict[str, Any], benchmark: Optional[str] = None) -> dict:
    from desta_audio.eval.benchmarks import get_benchmark
    from desta_audio.eval.scoring import score_predictions

    result, warnings = score_predictions(predictions, judge, options, benchmark)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    _print_summary(get_benchmark(result["benchmark"]), result)
    return result


def _print_summary(module: Any, result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    run_name = Path(result["predictions"]).name.removesuffix(".predictions.jsonl")  # tells the reference run apart
    table = Table(title=f"{run_name} ({result.get('scorer_version')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in module.headline(result).items():
        table.add_row(str(key), "-" if value is None else f"{value:.2f}")
    for key in ("judge_parse_failures", "missing_predictions", "missing_outputs", "fail_rate", "note"):
        if result.get(key) not in (None, ""):
            table.add_row(key, str(result[key]))
    Console().print(table)


def _generation(protocol: dict[str, Any], max_new_tokens: Optional[int]) -> dict[str, Any]:
    """The benchmark's decoding settings; --max-new-tokens overrides them for every run of the command."""
    return {**protocol, **({} if max_new_tokens is None else {"max_new_tokens": max_new_tokens})}


def _run(benchmark: str, data: Path, model: str, system_kind: SystemKind, out: Optional[Path], limit: Optional[int],
         batch_size: int, max_new_tokens: Optional[int], judge_spec: Optional[str], judge_cache: Optional[Path],
         judge_base_url: Optional[str], judge_key_env: str, score: bool, load_options: dict[str, Any],
         score_options: dict[str, Any], asr: str, base_url: Optional[str], restart: bool,
         reference_backbone: bool = False) -> None:
    from desta_audio.eval.benchmarks import get_benchmark
    from desta_audio.eval.runner import check_resume, predictions_path, run_inference
    from desta_audio.eval.scoring import choose_judge_prompts
    from desta_audio.eval.systems import TextBackbone

    setup_logging()
    module = get_benchmark(benchmark)
    with _user_errors():
        items, info = module.load(data, limit=limit, **{k: v for k, v in load_options.items() if v is not None})
        if not items:
            raise ValueError(f"{data}: no items loaded for {benchmark}")
        out_dir = out or Path("runs") / "eval" / Path(model).name
        judge = None
        if score:  # a bad judge setting or prompt path fails before any model work
            judge = _judge(judge_spec, judge_cache, judge_base_url, judge_key_env,
                           getattr(module, "JUDGE_MODEL", "gpt-4o-2024-11-20"), out_dir)
            if score_options.get("judge_prompts_file") is not None:
                choose_judge_prompts(module, score_options["judge_prompts_file"], data)
        generation = _generation(module.GENERATION, max_new_tokens)
        manifest = {"benchmark": module.NAME, "data": str(data.resolve()), "scorer_version": module.SCORER_VERSION,
                    "system_prompt": getattr(module, "SYSTEM_PROMPT", None), "model": model,
                    "system_kind": system_kind.value, "limit": limit, **info}
        runs = [(predictions_path(out_dir, module.NAME, info.get("run_name") or info.get("subset")), manifest)]
        if reference_backbone:
            runs.append((predictions_path(out_dir, module.NAME, "reference"),
                         {**manifest, "system_prompt": getattr(module, "REFERENCE_SYSTEM_PROMPT", None),
                          "role": "text-only backbone reference"}))
        for predictions, run_manifest in runs:
            check_resume(predictions, run_manifest, restart)  # before the model loads
        system = _system(system_kind, model, asr, base_url, batch_size)
        run_inference(system, items, runs[0][0], batch_size=batch_size, generation=generation, manifest=manifest)
        if reference_backbone:
            backbone = TextBackbone.from_desta(system) if system_kind is SystemKind.desta else system
            run_inference(backbone, items, runs[1][0], batch_size=batch_size,
                          generation=_generation(getattr(module, "REFERENCE_GENERATION", module.GENERATION),
                                                 max_new_tokens), manifest=runs[1][1])
        if not score:
            typer.echo(f"predictions: {runs[0][0]}")
        else:
            if reference_backbone:
                reference = _score_file(runs[1][0], judge, {**score_options, "reference_ifrate": None})
                score_options = {**score_options, "reference_ifrate": reference.get("ifrate")}
            _score_file(runs[0][0], judge, score_options)
    _report_failures([predictions for predictions, _ in runs])


def _report_failures(predictions_files: list[Path]) -> None:
    """Name the items that got no prediction, and exit non-zero when there are any."""
    from desta_audio.eval.records import iter_jsonl_tolerant
    from desta_audio.eval.runner import errors_path, manifest_path

    failed = 0
    for predictions in predictions_files:
        errors = list(iter_jsonl_tolerant(errors_path(predictions)))
        if not errors:
            continue
        failed += len(errors)
        total = json.loads(manifest_path(predictions).read_text(encoding="utf-8")).get("items_total", "?")
        typer.echo(f"{len(errors)} of {total} items failed; listed in {errors_path(predictions)}:", err=True)
        for row in errors[:5]:
            typer.echo(f"  {row['id']}: {row['error']}", err=True)
        if len(errors) > 5:
            typer.echo(f"  ... and {len(errors) - 5} more", err=True)
    if failed:
        typer.echo("They have no prediction (scored as missing outputs): fix them, then run the same command again "
                   "to generate only them.", err=True)
        raise typer.Exit(1)


# Shared options (typer needs them spelled out per command).
DATA = typer.Option(..., "--data", help="local copy: JSON/JSONL file, folder, HF save_to_disk folder or parquet")
MODEL = typer.Option(zoo.DEFAULT_PRESET, "--model", help="preset name, model folder or hub id (backbone/cascade: LLM; "
                                                  "api: the server's model id)")
SYSTEM = typer.Option(SystemKind.desta, "--system",
                      help="desta model, text-only backbone, ASR->LLM cascade, a served model (OpenAI API), or a "
                           "served text LLM reading the benchmark's text version (api-text)")
OUT = typer.Option(None, "--out", help="run folder (default runs/eval/<model>)")
LIMIT = typer.Option(None, "--limit", help="only the first N items (per file/track/instance)")
BATCH = typer.Option(4, "--batch-size", help="items per batched generate (--system api: requests in flight)")
TOKENS = typer.Option(None, "--max-new-tokens", help="override the benchmark's protocol value")
JUDGE = typer.Option(None, "--judge", help="none (default) | fake | openai[:MODEL] | hf:MODEL (packaged LLM name, "
                                           "folder or hub id) | replay:MODEL")
JUDGE_CACHE = typer.Option(None, "--judge-cache", help="JSONL verdict cache (default <out>/judge-cache.jsonl)")
JUDGE_URL = typer.Option(None, "--judge-base-url", help="OpenAI-compatible endpoint (vLLM, llama.cpp server...)")
JUDGE_KEY = typer.Option("OPENAI_API_KEY", "--judge-key-env", help="environment variable holding the API key")
JUDGE_PROMPTS = typer.Option(None, "--judge-prompts",
                             help="the benchmark's official judge code (its file or checkout folder; default: looked "
                                  "for in and above the benchmark's data folder), or a JSON file of replacements "
                                  "(see `desta eval judge-prompts`)")
RESTART = typer.Option(False, "--restart", help="move the predictions already in --out aside and start over")
SCORE = typer.Option(True, "--score/--no-score", help="score right after inference")
ASR = typer.Option("whisper-base", "--asr", help="cascade only: Whisper model for transcription")
MISSING = typer.Option(MissingOutputs.wrong, "--missing",
                       help="MMAU: items without output count as wrong, or are left out (skip: what the official "
                            "script does)")
EMPTY_LABEL = typer.Option(EmptyLabel.match, "--empty-label",
                           help="Dynamic-SUPERB: a label with no words after normalising ('[noise]') matches any "
                                "reply, as in DeSTA's metric (match), or counts as a miss (wrong)")
PARAGRAPHS = typer.Option(ParagraphSplit.newline, "--paragraph-split",
                          help="Speech-IFEval: paragraphs split as the official checker does (newline) or at blank "
                               "lines only")
API_KEY_ENV = "DESTA_API_KEY"
BASE_URL = typer.Option(None, "--base-url",
                        help=f"--system api/api-text: the server, e.g. http://localhost:8000/v1 (desta serve, vLLM); "
                             f"--model is its model id, the key is read from ${API_KEY_ENV}; --batch-size requests "
                             "go out at once")


@app.command("mmau")
def mmau_command(data: Path = DATA, model: str = MODEL, system: SystemKind = SYSTEM, out: Optional[Path] = OUT,
                 limit: Optional[int] = LIMIT, batch_size: int = BATCH, max_new_tokens: Optional[int] = TOKENS,
                 judge: Optional[str] = JUDGE, judge_cache: Optional[Path] = JUDGE_CACHE,
                 judge_base_url: Optional[str] = JUDGE_URL, judge_key_env: str = JUDGE_KEY, score: bool = SCORE,
                 asr: str = ASR, base_url: Optional[str] = BASE_URL,
                 version: Optional[str] = typer.Option(None, help="original | v05.15.25 (default: detected)"),
                 audio_dir: Optional[Path] = typer.Option(None, help="audio folder (default: beside the JSON)"),
                 raw: bool = typer.Option(False, "--raw", help="score the raw response, prefix included"),
                 missing: MissingOutputs = MISSING, restart: bool = RESTART):
    """MMAU test-mini/test: official string match on the answer with the DeSTA prefix removed."""
    _run("mmau", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache, judge_base_url,
         judge_key_env, score, {"version": version, "audio_dir": audio_dir},
         {"strip_prefix": not raw, "missing": missing.value}, asr,
         base_url, restart)


@app.command("dynamic-superb")
def dynamic_superb_command(data: Path = DATA, model: str = MODEL, system: SystemKind = SYSTEM,
                           out: Optional[Path] = OUT, limit: Optional[int] = LIMIT, batch_size: int = BATCH,
                           max_new_tokens: Optional[int] = TOKENS, judge: Optional[str] = JUDGE,
                           judge_cache: Optional[Path] = JUDGE_CACHE, judge_base_url: Optional[str] = JUDGE_URL,
                           judge_key_env: str = JUDGE_KEY, score: bool = SCORE, asr: str = ASR,
                           base_url: Optional[str] = BASE_URL,
                           judge_prompts: Optional[Path] = JUDGE_PROMPTS,
                           matcher: str = typer.Option("consecutive", help="consecutive | judge"),
                           empty_label: EmptyLabel = EMPTY_LABEL, restart: bool = RESTART):
    """Dynamic-SUPERB Phase-1: accuracy per instance, per dimension and overall."""
    _run("dynamic_superb", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache,
         judge_base_url, judge_key_env, score, {}, {"matcher": matcher, "empty_label": empty_label.value,
                                                              "judge_prompts_file": judge_prompts}, asr,
         base_url, restart)


@app.command("sakura")
def sakura_command(data: Path = DATA, model: str = MODEL, system: SystemKind = SYSTEM, out: Optional[Path] = OUT,
                   limit: Optional[int] = LIMIT, batch_size: int = BATCH, max_new_tokens: Optional[int] = TOKENS,
                   judge: Optional[str] = JUDGE, judge_cache: Optional[Path] = JUDGE_CACHE,
                   judge_base_url: Optional[str] = JUDGE_URL, judge_key_env: str = JUDGE_KEY, score: bool = SCORE,
                   asr: str = ASR, base_url: Optional[str] = BASE_URL, judge_prompts: Optional[Path] = JUDGE_PROMPTS,
                   restart: bool = RESTART):
    """SAKURA: single- vs multi-hop accuracy per track (LLM judge)."""
    _run("sakura", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache, judge_base_url,
         judge_key_env, score, {}, {"judge_prompts_file": judge_prompts}, asr, base_url, restart)


@app.command("speech-ifeval")
def speech_ifeval_command(data: Path = DATA, model: str = MODEL, system: SystemKind = SYSTEM,
                          out: Optional[Path] = OUT, limit: Optional[int] = LIMIT, batch_size: int = BATCH,
                          max_new_tokens: Optional[int] = TOKENS, judge: Optional[str] = JUDGE,
                          judge_cache: Optional[Path] = JUDGE_CACHE, judge_base_url: Optional[str] = JUDGE_URL,
                          judge_key_env: str = JUDGE_KEY, score: bool = SCORE, asr: str = ASR,
                          base_url: Optional[str] = BASE_URL,
                          reference_backbone: bool = typer.Option(
                              True, "--reference-backbone/--no-reference-backbone",
                              help="also run the text-only backbone on textual_audio for the forgetting delta"),
                          reference_ifrate: Optional[float] = typer.Option(
                              None, help="IFrate of the text-only reference, when known (e.g. from a --system backbone "
                                         "run): used instead of running the backbone"),
                          paragraph_split: ParagraphSplit = PARAGRAPHS, judge_prompts: Optional[Path] = JUDGE_PROMPTS,
                          audio_dir: Optional[Path] = typer.Option(None, help="base folder of audio_filepath"),
                          restart: bool = RESTART):
    """Speech-IFEval: IFrate (closed-ended, creative writing, chain-of-thought) and forgetting delta."""
    if reference_backbone and reference_ifrate is None and system is not SystemKind.desta:
        typer.echo(f"note: the text-only reference runs only for --system desta; with --system {system.value}, pass "
                   "--reference-ifrate (e.g. from a --system backbone run) to get the forgetting delta", err=True)
    _run("speech_ifeval", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache,
         judge_base_url, judge_key_env, score, {"audio_dir": audio_dir}, {"reference_ifrate": reference_ifrate,
                                                                "judge_prompts_file": judge_prompts,
                                                                "paragraph_split": paragraph_split.value},
         asr, base_url, restart,
         reference_backbone=reference_backbone and reference_ifrate is None and system is SystemKind.desta)


@app.command("voicebench")
def voicebench_command(data: Path = DATA, model: str = MODEL, system: SystemKind = SYSTEM,
                       out: Optional[Path] = OUT, limit: Optional[int] = LIMIT, batch_size: int = BATCH,
                       max_new_tokens: Optional[int] = TOKENS, judge: Optional[str] = JUDGE,
                       judge_cache: Optional[Path] = JUDGE_CACHE, judge_base_url: Optional[str] = JUDGE_URL,
                       judge_key_env: str = JUDGE_KEY, score: bool = SCORE, asr: str = ASR,
                       base_url: Optional[str] = BASE_URL,
                       subset: Optional[str] = typer.Option(None, help="default: the data folder's name"),
                       split: Optional[str] = typer.Option(None, help="sd-qa accent (default usa), '*' for all"),
                       seed: int = typer.Option(0, help="seed of the random-answer fallback"),
                       judge_prompts: Optional[Path] = JUDGE_PROMPTS, restart: bool = RESTART):
    """VoiceBench: one subset per call; `desta eval report` averages the subsets into the overall score."""
    _run("voicebench", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache,
         judge_base_url, judge_key_env, score, {"subset": subset, "split": split},
         {"seed": seed, "judge_prompts_file": judge_prompts}, asr, base_url, restart)


@app.command("score")
def score_command(predictions: Path = typer.Argument(..., help="a *.predictions.jsonl file"),
                  benchmark: Optional[str] = typer.Option(None, help="default: from the manifest beside the file"),
                  judge: Optional[str] = JUDGE, judge_cache: Optional[Path] = JUDGE_CACHE,
                  judge_base_url: Optional[str] = JUDGE_URL, judge_key_env: str = JUDGE_KEY,
                  raw: bool = typer.Option(False, "--raw", help="MMAU: score the raw response"),
                  missing: MissingOutputs = MISSING,
                  matcher: Optional[str] = typer.Option(None, help="Dynamic-SUPERB: consecutive (default) | judge"),
                  empty_label: EmptyLabel = EMPTY_LABEL,
                  reference_ifrate: Optional[float] = typer.Option(
                      None, help="Speech-IFEval: IFrate of the text-only reference, for the forgetting delta"),
                  paragraph_split: ParagraphSplit = PARAGRAPHS,
                  seed: int = typer.Option(0, help="VoiceBench: fallback seed"),
                  judge_prompts: Optional[Path] = JUDGE_PROMPTS):
    """Recompute scores from a predictions file; no model needed (judge verdicts replay from the cache)."""
    from desta_audio.eval.benchmarks import get_benchmark
    from desta_audio.eval.runner import manifest_path

    with _user_errors("the predictions file must come from a run of that benchmark (see --benchmark)"):
        manifest_file = manifest_path(predictions)
        name = benchmark or (json.loads(manifest_file.read_text()).get("benchmark") if manifest_file.exists()
                             else None)
        if name is None:
            raise ValueError(f"{predictions}: no manifest beside it; pass --benchmark")
        judge_obj = _judge(judge, judge_cache, judge_base_url, judge_key_env,
                           getattr(get_benchmark(name), "JUDGE_MODEL", "gpt-4o-2024-11-20"), predictions.parent)
        options = {"strip_prefix": not raw, "missing": missing.value, "matcher": matcher,
                   "empty_label": empty_label.value,
                   "reference_ifrate": reference_ifrate, "paragraph_split": paragraph_split.value, "seed": seed,
                   "judge_prompts_file": judge_prompts}
        _score_file(predictions, judge_obj, options, benchmark=name)


@app.command("judge-prompts")
def judge_prompts_command(benchmark: Optional[str] = typer.Argument(None, help="one benchmark (default: all)")):
    """Print the default judge prompts as JSON: the file shape `--judge-prompts` reads."""
    from desta_audio.eval.benchmarks import BENCHMARKS, get_benchmark
    from desta_audio.eval.judge_prompts import defaults_json

    names = [benchmark] if benchmark else list(BENCHMARKS)
    with _user_errors():
        modules = [get_benchmark(name) for name in names]
    typer.echo(defaults_json({m.NAME: m.JUDGE_PROMPTS for m in modules if hasattr(m, "JUDGE_PROMPTS")}))


@app.command("report")
def report_command(run_dir: Path = typer.Argument(..., help="run folder with *.scores.json"),
                   label: str = typer.Option("this run", help="name of the system in the tables")):
    """Markdown + JSON tables beside the published numbers, and a PNG chart."""
    from desta_audio.eval.report import write_report

    with _user_errors():
        written = write_report(run_dir, label)
    for kind, path in written.items():
        typer.echo(f"{kind}: {path}")


@app.command("retention")
def retention_command(model: str = typer.Option(zoo.DEFAULT_PRESET, help="DeSTA model: preset name, folder or hub id"),
                      n: int = typer.Option(50, help="number of instructions"),
                      seed: int = typer.Option(0, help="seed of the instruction sample"),
                      batch_size: int = typer.Option(4, help="items per batched generate"),
                      max_new_tokens: int = typer.Option(128, help="longest answer, in tokens"),
                      out: Optional[Path] = typer.Option(None, help="also write the result and every answer here "
                                                                    "(JSON)")):
    """Quick instruction-following retention check: audio model vs its text-only backbone."""
    from desta_audio.eval.retention import retention_check
    from desta_audio.eval.systems import load_desta

    with _user_errors():
        system = load_desta(model)
    result = retention_check(system, n=n, seed=seed, batch_size=batch_size, max_new_tokens=max_new_tokens)
    summary = json.dumps(result.as_dict(), indent=2)
    typer.echo(summary)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result.as_dict(), "samples": result.samples}, indent=2), encoding="utf-8")
