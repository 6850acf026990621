"""Score a predictions file: the items that failed count as missing outputs, the judge prompts are the official
ones when the benchmark's code is at hand or can be downloaded, and the score file and manifest say what was used.

Errors are raised as ValueError (or FileNotFoundError) with a one-line message; warnings are returned for the caller
to show.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from desta_audio.eval.judge_prompts import PROJECT_WORDING, PromptSource, file_sha256, load_overrides
from desta_audio.eval.records import iter_jsonl_tolerant, read_jsonl
from desta_audio.eval.runner import errors_path, manifest_path, write_manifest


def choose_judge_prompts(module: ModuleType, explicit: Path | None,
                         data: str | Path | None) -> tuple[PromptSource | None, str | None]:
    """(prompts to use instead of the project's wording, why the project's wording is used otherwise).

    `explicit` (`--judge-prompts`) is a JSON file of replacements, or the official file or checkout folder; when it
    cannot be used that is an error. Otherwise the official file is looked for in and above the data folder, then
    downloaded from the benchmark's repository (once; kept in the cache).
    """
    from desta_audio.eval.official_prompts import fetch_official, find_official_file, load_official, official_file

    if not hasattr(module, "JUDGE_PROMPTS"):
        if explicit is not None:
            raise ValueError(f"{module.NAME} is not scored by a judge; --judge-prompts does not apply")
        return None, None
    if explicit is not None:
        if explicit.suffix.lower() == ".json":
            overrides = load_overrides(explicit, module.NAME, module.JUDGE_PROMPTS)
            return PromptSource(overrides, "user file", str(explicit), file_sha256(explicit)), None
        return load_official(module.NAME, explicit), None
    where = official_file(module.NAME)
    if where is None:
        return None, f"no official judge prompt is known for {module.NAME}"
    found = find_official_file(module.NAME, data) if data else None
    if found is not None:
        try:
            return load_official(module.NAME, found), None
        except ValueError as error:
            return None, str(error)  # a broken checkout beside the data is reported rather than replaced
    fetched, why_not = fetch_official(module.NAME)
    if fetched is not None:
        return fetched, None
    return None, f"no {where} of the benchmark's code found in or above the data folder, and {why_not}"


def _failed_rows(predictions: Path, answered: set[str]) -> list[dict[str, Any]]:
    """Rows without an output for the items the latest run could not answer (scored as missing outputs)."""
    return [{"id": row["id"], **(row.get("reference") or {}), "response": None}
            for row in iter_jsonl_tolerant(errors_path(predictions)) if str(row.get("id")) not in answered]


def score_predictions(predictions: Path, judge: Any, options: dict[str, Any],
                      benchmark: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Score `predictions`, write `<name>.scores.json` beside it, and return (result, warnings)."""
    from desta_audio.eval.benchmarks import get_benchmark

    manifest_file = manifest_path(predictions)
    manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.exists() else {}
    name = benchmark or manifest.get("benchmark")
    if name is None:
        raise ValueError(f"{predictions}: no manifest beside it; say which benchmark with --benchmark")
    module = get_benchmark(name)
    rows = read_jsonl(predictions)
    failed = _failed_rows(predictions, {str(row.get("id")) for row in rows})
    source, fallback_reason = choose_judge_prompts(module, options.get("judge_prompts_file"), manifest.get("data"))
    kwargs = {k: v for k, v in options.items() if v is not None and k != "judge_prompts_file"}
    if source is not None:
        kwargs["judge_prompts"] = source
    result = module.score(rows + failed, judge, **kwargs)
    result.setdefault("benchmark", module.NAME)
    missing = len(failed) + sum(1 for row in rows if row.get("error"))
    result["missing_predictions"] = missing  # scored as the benchmark's scorer scores an empty output
    # Without a manifest (or its item count) nothing is known to be missing: not a negative count of items.
    not_run = max(0, (manifest.get("items_total") or 0) - len(rows) - len(failed))
    if not_run:
        result["items_not_run"] = not_run  # an interrupted run: not in the score at all until it is resumed
    result.update(predictions=str(predictions), data_version=manifest.get("data_version"),
                  system=manifest.get("system"))
    out = predictions.with_name(predictions.name.replace(".predictions.jsonl", ".scores.json"))
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    if manifest_file.exists():
        write_manifest(manifest_file, {"scoring": {"scorer_version": module.SCORER_VERSION,
                                                   "judge": getattr(judge, "name", None),
                                                   "judge_prompts": result.get("judge_prompts"),
                                                   "options": options, "scores": str(out)}})
    return result, _warnings(module, result, fallback_reason, missing, not_run)


def _warnings(module: ModuleType, result: dict[str, Any], fallback_reason: str | None, missing: int,
              not_run: int) -> list[str]:
    from desta_audio.eval.official_prompts import official_file

    warnings = []
    prompts = result.get("judge_prompts")
    if isinstance(prompts, dict) and prompts.get("origin") == PROJECT_WORDING:
        where = official_file(module.NAME)
        hint = f"; pass --judge-prompts with your checkout of the benchmark's code ({where})" if where else ""
        warnings.append(f"{module.NAME} judge prompts: {PROJECT_WORDING}, not the official text ({fallback_reason}); "
                        f"scores may differ from official ones{hint}")
    if missing:
        warnings.append(f"{missing} item(s) have no prediction and are scored as missing outputs")
    if not_run:
        warnings.append(f"{not_run} item(s) were never run (an interrupted run?) and are not in the score")
    return warnings
