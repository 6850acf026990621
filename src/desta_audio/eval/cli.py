"""`desta eval`: run a benchmark (inference + scoring), rescore predictions without the model, build reports, and
the quick retention check. Heavy imports happen inside the commands so `desta --help` stays fast."""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(help="Evaluate on MMAU, Dynamic-SUPERB, SAKURA, Speech-IFEval and VoiceBench; rescore; report.",
                  no_args_is_help=True)
logger = logging.getLogger(__name__)


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
    return build_judge(spec, cache_path=cache or out_dir / "judge-cache.jsonl", base_url=base_url,
                       api_key_env=key_env, model_name=default_model)


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
    from desta_audio import zoo

    path = Path(model) if Path(model).is_dir() else zoo.resolve_component(model)
    return systems.TextBackbone.from_path(path)


def _score_file(predictions: Path, judge: Any, options: dict[str, Any], benchmark: Optional[str] = None) -> dict:
    from desta_audio.eval.benchmarks import get_benchmark
    from desta_audio.eval.records import read_jsonl
    from desta_audio.eval.runner import manifest_path, write_manifest

    manifest_file = manifest_path(predictions)
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    name = benchmark or manifest.get("benchmark")
    if name is None:
        raise typer.BadParameter(f"{predictions}: no manifest beside it; say which benchmark with --benchmark")
    module = get_benchmark(name)
    try:
        rows = read_jsonl(predictions)
    except (FileNotFoundError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    kwargs = {k: v for k, v in options.items() if v is not None and k != "judge_prompts_file"}
    if options.get("judge_prompts_file") is not None:
        kwargs["judge_prompts"] = _judge_prompt_overrides(module, options["judge_prompts_file"])
    result = module.score(rows, judge, **kwargs)
    result.setdefault("benchmark", module.NAME)
    failed = sum(1 for row in rows if row.get("error"))
    if failed:
        result["failed_requests"] = failed  # scored as missing outputs; `desta eval` again retries them
    result["predictions"] = str(predictions)
    result["data_version"] = manifest.get("data_version")
    result["system"] = manifest.get("system")
    out = predictions.with_name(predictions.name.replace(".predictions.jsonl", ".scores.json"))
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    if manifest_file.exists():
        write_manifest(manifest_file, {"scoring": {"scorer_version": module.SCORER_VERSION,
                                                   "judge": getattr(judge, "name", None),
                                                   "options": options, "scores": str(out)}})
    _print_summary(module, result)
    return result


def _judge_prompt_overrides(module: Any, path: Path) -> dict[str, Any]:
    from desta_audio.eval.judge_prompts import load_overrides

    if not hasattr(module, "JUDGE_PROMPTS"):
        raise typer.BadParameter(f"{module.NAME} is not scored by a judge; --judge-prompts does not apply")
    try:
        return load_overrides(path, module.NAME, module.JUDGE_PROMPTS)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _print_summary(module: Any, result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{module.NAME} ({result.get('scorer_version')})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in module.headline(result).items():
        table.add_row(str(key), "-" if value is None else f"{value:.2f}")
    for key in ("judge_parse_failures", "missing_outputs", "failed_requests", "fail_rate", "note"):
        if result.get(key) not in (None, ""):
            table.add_row(key, str(result[key]))
    Console().print(table)


def _run(benchmark: str, data: Path, model: str, system_kind: SystemKind, out: Optional[Path], limit: Optional[int],
         batch_size: int, max_new_tokens: Optional[int], judge_spec: Optional[str], judge_cache: Optional[Path],
         judge_base_url: Optional[str], judge_key_env: str, score: bool, load_options: dict[str, Any],
         score_options: dict[str, Any], asr: str, base_url: Optional[str], reference_backbone: bool = False) -> None:
    from desta_audio.eval.benchmarks import get_benchmark
    from desta_audio.eval.runner import predictions_path, run_inference
    from desta_audio.eval.systems import TextBackbone, describe_system

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = get_benchmark(benchmark)
    try:
        items, info = module.load(data, limit=limit, **{k: v for k, v in load_options.items() if v is not None})
    except KeyError as error:
        raise typer.BadParameter(f"{data}: a record has no {error} field; --data must be {benchmark}'s own release "
                                 "format (see the README's evaluation section)") from None
    except (FileNotFoundError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    if not items:
        raise typer.BadParameter(f"{data}: no items loaded for {benchmark}")
    out_dir = out or Path("runs") / "eval" / Path(model).name
    subset = info.get("subset")
    generation = dict(module.GENERATION)
    if max_new_tokens is not None:
        generation["max_new_tokens"] = max_new_tokens
    system = _system(system_kind, model, asr, base_url, batch_size)
    manifest = {"benchmark": module.NAME, "data": str(data), "scorer_version": module.SCORER_VERSION,
                "system_prompt": getattr(module, "SYSTEM_PROMPT", None), "model": model,
                "system_kind": system_kind.value, "limit": limit, **info}
    predictions = run_inference(system, items, predictions_path(out_dir, module.NAME, subset), batch_size=batch_size,
                                generation=generation, manifest=manifest)
    reference_predictions = None
    if reference_backbone:
        backbone = TextBackbone.from_desta(system) if system_kind is SystemKind.desta else system
        reference_generation = dict(getattr(module, "REFERENCE_GENERATION", generation))
        reference_predictions = run_inference(
            backbone, items, predictions_path(out_dir, module.NAME, "reference"), batch_size=batch_size,
            generation=reference_generation,
            manifest={**manifest, "system_prompt": getattr(module, "REFERENCE_SYSTEM_PROMPT", None),
                      "role": "text-only backbone reference", "system_detail": describe_system(backbone)})
    if not score:
        typer.echo(f"predictions: {predictions}")
        return
    judge = _judge(judge_spec, judge_cache, judge_base_url, judge_key_env,
                   getattr(module, "JUDGE_MODEL", "gpt-4o-2024-11-20"), out_dir)
    if reference_predictions is not None:
        reference = _score_file(reference_predictions, judge, {k: v for k, v in score_options.items()
                                                               if k != "reference_ifrate"})
        score_options = {**score_options, "reference_ifrate": reference.get("ifrate")}
    _score_file(predictions, judge, score_options)


# Shared options (typer needs them spelled out per command).
DATA = typer.Option(..., "--data", help="local copy: JSON/JSONL file, folder, HF save_to_disk folder or parquet")
MODEL = typer.Option("desta-mini", "--model", help="preset name, model folder or hub id (backbone/cascade: LLM; "
                                                  "api: the server's model id)")
SYSTEM = typer.Option(SystemKind.desta, "--system",
                      help="desta model, text-only backbone, ASR->LLM cascade, a served model (OpenAI API), or a "
                           "served text LLM reading the benchmark's text version (api-text)")
OUT = typer.Option(None, "--out", help="run folder (default runs/eval/<model>)")
LIMIT = typer.Option(None, "--limit", help="only the first N items (per file/track/instance)")
BATCH = typer.Option(4, "--batch-size")
TOKENS = typer.Option(None, "--max-new-tokens", help="override the benchmark's protocol value")
JUDGE = typer.Option(None, "--judge", help="none | fake | openai[:MODEL] | hf:PATH | replay:MODEL")
JUDGE_CACHE = typer.Option(None, "--judge-cache", help="JSONL verdict cache (default <out>/judge-cache.jsonl)")
JUDGE_URL = typer.Option(None, "--judge-base-url", help="OpenAI-compatible endpoint (vLLM, llama.cpp server...)")
JUDGE_KEY = typer.Option("OPENAI_API_KEY", "--judge-key-env", help="environment variable holding the API key")
JUDGE_PROMPTS = typer.Option(None, "--judge-prompts", help="JSON file replacing judge prompts (e.g. with the "
                                                           "benchmark's own text); see `desta eval judge-prompts`")
SCORE = typer.Option(True, "--score/--no-score", help="score right after inference")
ASR = typer.Option("whisper-base", "--asr", help="cascade only: Whisper model for transcription")
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
                 raw: bool = typer.Option(False, "--raw", help="score the raw response, prefix included")):
    """MMAU test-mini/test: official string match on the answer with the DeSTA prefix removed."""
    _run("mmau", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache, judge_base_url,
         judge_key_env, score, {"version": version, "audio_dir": audio_dir}, {"strip_prefix": not raw}, asr,
         base_url)


@app.command("dynamic-superb")
def dynamic_superb_command(data: Path = DATA, model: str = MODEL, system: SystemKind = SYSTEM,
                           out: Optional[Path] = OUT, limit: Optional[int] = LIMIT, batch_size: int = BATCH,
                           max_new_tokens: Optional[int] = TOKENS, judge: Optional[str] = JUDGE,
                           judge_cache: Optional[Path] = JUDGE_CACHE, judge_base_url: Optional[str] = JUDGE_URL,
                           judge_key_env: str = JUDGE_KEY, score: bool = SCORE, asr: str = ASR,
                           base_url: Optional[str] = BASE_URL,
                           judge_prompts: Optional[Path] = JUDGE_PROMPTS,
                           matcher: str = typer.Option("consecutive", help="consecutive | judge")):
    """Dynamic-SUPERB Phase-1: accuracy per instance, per dimension and overall."""
    _run("dynamic_superb", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache,
         judge_base_url, judge_key_env, score, {}, {"matcher": matcher, "judge_prompts_file": judge_prompts}, asr,
         base_url)


@app.command("sakura")
def sakura_command(data: Path = DATA, model: str = MODEL, system: SystemKind = SYSTEM, out: Optional[Path] = OUT,
                   limit: Optional[int] = LIMIT, batch_size: int = BATCH, max_new_tokens: Optional[int] = TOKENS,
                   judge: Optional[str] = JUDGE, judge_cache: Optional[Path] = JUDGE_CACHE,
                   judge_base_url: Optional[str] = JUDGE_URL, judge_key_env: str = JUDGE_KEY, score: bool = SCORE,
                   asr: str = ASR, base_url: Optional[str] = BASE_URL, judge_prompts: Optional[Path] = JUDGE_PROMPTS):
    """SAKURA: single- vs multi-hop accuracy per track (LLM judge)."""
    _run("sakura", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache, judge_base_url,
         judge_key_env, score, {}, {"judge_prompts_file": judge_prompts}, asr, base_url)


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
                          reference_ifrate: Optional[float] = typer.Option(None, help="known reference IFrate"),
                          judge_prompts: Optional[Path] = JUDGE_PROMPTS,
                          audio_dir: Optional[Path] = typer.Option(None, help="base folder of audio_filepath")):
    """Speech-IFEval: IFrate (closed-ended, creative writing, chain-of-thought) and forgetting delta."""
    if reference_backbone and reference_ifrate is None and system is not SystemKind.desta:
        typer.echo(f"note: the text-only reference runs only for --system desta; with --system {system.value}, pass "
                   "--reference-ifrate (e.g. from a --system backbone run) to get the forgetting delta", err=True)
    _run("speech_ifeval", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache,
         judge_base_url, judge_key_env, score, {"audio_dir": audio_dir}, {"reference_ifrate": reference_ifrate,
                                                                "judge_prompts_file": judge_prompts},
         asr, base_url,
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
                       judge_prompts: Optional[Path] = JUDGE_PROMPTS):
    """VoiceBench: one subset per call; `desta eval report` averages the subsets into the overall score."""
    _run("voicebench", data, model, system, out, limit, batch_size, max_new_tokens, judge, judge_cache,
         judge_base_url, judge_key_env, score, {"subset": subset, "split": split},
         {"seed": seed, "judge_prompts_file": judge_prompts}, asr, base_url)


@app.command("score")
def score_command(predictions: Path = typer.Argument(..., help="a *.predictions.jsonl file"),
                  benchmark: Optional[str] = typer.Option(None, help="default: from the manifest beside the file"),
                  judge: Optional[str] = JUDGE, judge_cache: Optional[Path] = JUDGE_CACHE,
                  judge_base_url: Optional[str] = JUDGE_URL, judge_key_env: str = JUDGE_KEY,
                  raw: bool = typer.Option(False, "--raw", help="MMAU: score the raw response"),
                  missing: str = typer.Option("wrong", help="MMAU: items without output: wrong | skip"),
                  matcher: Optional[str] = typer.Option(None, help="Dynamic-SUPERB: consecutive | judge"),
                  reference_ifrate: Optional[float] = typer.Option(None, help="Speech-IFEval: reference IFrate"),
                  paragraph_split: str = typer.Option("newline", help="Speech-IFEval: newline (official) | "
                                                                      "blank_lines"),
                  seed: int = typer.Option(0, help="VoiceBench: fallback seed"),
                  judge_prompts: Optional[Path] = JUDGE_PROMPTS):
    """Recompute scores from a predictions file; no model needed (judge verdicts replay from the cache)."""
    from desta_audio.eval.benchmarks import get_benchmark
    from desta_audio.eval.runner import manifest_path

    manifest_file = manifest_path(predictions)
    name = benchmark or (json.loads(manifest_file.read_text()).get("benchmark") if manifest_file.exists() else None)
    if name is None:
        raise typer.BadParameter(f"{predictions}: no manifest beside it; pass --benchmark")
    judge_obj = _judge(judge, judge_cache, judge_base_url, judge_key_env,
                       getattr(get_benchmark(name), "JUDGE_MODEL", "gpt-4o-2024-11-20"), predictions.parent)
    options = {"strip_prefix": not raw, "missing": missing, "matcher": matcher, "reference_ifrate": reference_ifrate,
               "paragraph_split": paragraph_split, "seed": seed, "judge_prompts_file": judge_prompts}
    _score_file(predictions, judge_obj, options, benchmark=name)


@app.command("judge-prompts")
def judge_prompts_command(benchmark: Optional[str] = typer.Argument(None, help="one benchmark (default: all)")):
    """Print the default judge prompts as JSON: the file shape `--judge-prompts` reads."""
    from desta_audio.eval.benchmarks import BENCHMARKS, get_benchmark
    from desta_audio.eval.judge_prompts import defaults_json

    names = [benchmark] if benchmark else list(BENCHMARKS)
    modules = [get_benchmark(name) for name in names]
    typer.echo(defaults_json({m.NAME: m.JUDGE_PROMPTS for m in modules if hasattr(m, "JUDGE_PROMPTS")}))


@app.command("report")
def report_command(run_dir: Path = typer.Argument(..., help="run folder with *.scores.json"),
                   label: str = typer.Option("this run", help="name of the system in the tables")):
    """Markdown + JSON tables beside the published numbers, and a PNG chart."""
    from desta_audio.eval.report import write_report

    try:
        written = write_report(run_dir, label)
    except (FileNotFoundError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    for kind, path in written.items():
        typer.echo(f"{kind}: {path}")


@app.command("retention")
def retention_command(model: str = MODEL, n: int = typer.Option(50, help="number of instructions"),
                      seed: int = typer.Option(0), batch_size: int = BATCH,
                      max_new_tokens: int = typer.Option(128), out: Optional[Path] = typer.Option(None)):
    """Quick instruction-following retention check: audio model vs its text-only backbone."""
    from desta_audio.eval.retention import retention_check
    from desta_audio.eval.systems import load_desta

    result = retention_check(load_desta(model), n=n, seed=seed, batch_size=batch_size, max_new_tokens=max_new_tokens)
    summary = json.dumps(result.as_dict(), indent=2)
    typer.echo(summary)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result.as_dict(), "samples": result.samples}, indent=2), encoding="utf-8")
