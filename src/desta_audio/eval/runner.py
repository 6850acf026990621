"""Batched, resumable inference: items -> predictions JSONL (one row per item, flushed per batch) + a manifest.

A run interrupted at any point resumes by skipping the ids already in the predictions file (a half-written last
line is dropped), after checking that those predictions come from the same data and system. An item whose own input
is unusable (missing or corrupt audio, a request the server refuses) does not stop the run: it goes to the errors
file beside the predictions instead of a prediction row, so the next run tries it again. Scoring reads only these
files, so it never needs the model.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from desta_audio.eval.records import AudioRef, EvalItem, conversation_for_record, iter_jsonl_tolerant

logger = logging.getLogger(__name__)


class ChatSystem(Protocol):
    """Anything with the DeSTAModel chat API. `uses_text_audio` systems get `EvalItem.text_conversation`."""

    def chat(self, conversations: list[list[dict[str, Any]]], **generation: Any) -> list[Any]: ...


# Errors of one item's own input: AudioError (missing, corrupt, too long), ConversationError (a malformed prompt).
ITEM_ERRORS = (ValueError,)
# Manifest entries that say which data and system produced a predictions file; a resumed run must match them.
RUN_IDENTITY = ("benchmark", "data", "data_version", "split", "subset", "model", "system_kind")
PREDICTIONS_SUFFIX = ".predictions.jsonl"


class ResumeMismatch(ValueError):
    """The predictions file to resume holds answers from other data or another system."""


def predictions_path(out_dir: str | Path, benchmark: str, subset: str | None = None) -> Path:
    stem = benchmark if not subset else f"{benchmark}.{subset}"
    return Path(out_dir) / f"{stem}{PREDICTIONS_SUFFIX}"


def _beside(predictions: Path, suffix: str) -> Path:
    name = predictions.name
    stem = name[:-len(PREDICTIONS_SUFFIX)] if name.endswith(PREDICTIONS_SUFFIX) else name
    return predictions.with_name(stem + suffix)


def manifest_path(predictions: Path) -> Path:
    return _beside(predictions, ".manifest.json")


def errors_path(predictions: Path) -> Path:
    """Items of the latest run that got no prediction: id, audio, a one-line reason and the scorer's fields."""
    return _beside(predictions, ".errors.jsonl")


def materialize(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decode AudioRefs just before inference (paths stay paths; bytes become 16 kHz arrays)."""
    out = []
    for message in conversation:
        message = dict(message)
        if message.get("audios"):
            message["audios"] = [
                {**a, "audio": a["audio"].load() if isinstance(a["audio"], AudioRef) else a["audio"]}
                for a in message["audios"]
            ]
        out.append(message)
    return out


def _completed_ids(path: Path) -> set[str]:
    """Ids already answered. The file is rewritten without a torn last line (an interrupted run), so appends start
    on a clean line, and without rows whose request failed (`error`), so a resumed run tries those again."""
    parsed = list(iter_jsonl_tolerant(path))
    rows = [r for r in parsed if not r.get("error")]
    if path.exists():
        valid = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if valid != path.read_text(encoding="utf-8"):
            if len(rows) < len(parsed):
                logger.warning("%s: %d failed requests will be tried again", path, len(parsed) - len(rows))
            else:
                logger.warning("%s: dropping an incomplete last line left by an interrupted run", path)
            path.write_text(valid, encoding="utf-8")
    return {str(r["id"]) for r in rows if "id" in r}


def _same(key: str, old: Any, new: Any) -> bool:
    if key == "data" and old is not None and new is not None:
        return Path(old).resolve() == Path(new).resolve()
    return old == new


def check_resume(predictions: Path, manifest: dict[str, Any], restart: bool = False) -> None:
    """Refuse to add to predictions of other data or another system (a resumed run would silently keep their
    answers); with `restart`, move the old files aside (nothing is deleted) so the run starts over."""
    predictions = Path(predictions)
    done = [row for row in iter_jsonl_tolerant(predictions) if not row.get("error")]
    if not done:
        return
    if restart:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        for path in (predictions, errors_path(predictions), manifest_path(predictions)):
            if path.exists():
                os.replace(path, path.with_name(f"{path.name}.replaced-{stamp}"))
        logger.info("%s: earlier predictions moved aside (*.replaced-%s); starting over", predictions, stamp)
        return
    existing = manifest_path(predictions)
    recorded = json.loads(existing.read_text(encoding="utf-8")) if existing.exists() else {}
    for key in RUN_IDENTITY:
        if key in recorded and key in manifest and not _same(key, recorded[key], manifest[key]):
            raise ResumeMismatch(
                f"{predictions} already holds {len(done)} predictions of another run ({key}: {recorded[key]!r} "
                f"there, {manifest[key]!r} now); pass another --out, or --restart to move them aside and start over")


def _versions() -> dict[str, str]:
    from desta_audio.eval.benchmarks._common import installed_version

    info = {"python": platform.python_version()}
    for package in ("desta_audio", "torch", "transformers"):
        try:
            module = __import__(package)
            info[package] = getattr(module, "__version__", "unknown")
        except ImportError:
            continue
    info["qa-metrics"] = installed_version("qa-metrics") or "not installed"  # PEDANT: its versions disagree
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    existing.update(manifest)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(existing, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def run_inference(
    system: ChatSystem,
    items: Sequence[EvalItem],
    predictions: str | Path,
    *,
    batch_size: int = 4,
    generation: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
    progress: bool = True,
    restart: bool = False,
) -> Path:
    """Generate a reply for every item not yet in `predictions`; returns the predictions path. Items that fail on
    their own input are listed in `errors_path(predictions)` (rewritten by every run) instead."""
    from desta_audio.eval.systems import describe_system

    predictions = Path(predictions)
    predictions.parent.mkdir(parents=True, exist_ok=True)
    generation = dict(generation or {})
    text_mode = bool(getattr(system, "uses_text_audio", False))
    if text_mode and any(item.text_conversation is None for item in items):
        raise ValueError("this system reads audio as text, but the benchmark defines no text version of its items")
    check_resume(predictions, manifest or {}, restart)
    done = _completed_ids(predictions)
    todo = [item for item in items if item.id not in done]
    example = items[0] if items else None
    write_manifest(manifest_path(predictions), {
        **(manifest or {}),
        "system": describe_system(system),
        "generation": generation,
        "batch_size": batch_size,
        "example_conversation": conversation_for_record(
            (example.text_conversation if text_mode else example.conversation)) if example else None,
        "items_total": len(items),
        "versions": _versions(),
        "inference_started" if not done else "inference_resumed": _now(),
    })
    if done:
        logger.info("%s: %d of %d items already done; resuming", predictions, len(items) - len(todo), len(items))
    errors = errors_path(predictions)
    errors.unlink(missing_ok=True)  # this run tries every earlier failure again
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=predictions.name, unit="item",
               disable=not progress)
    answered, failed = 0, 0
    with open(predictions, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            replies, failures = _answer(system, batch, text_mode, generation)
            for item, reply in replies:
                row = {"id": item.id, "response": getattr(reply, "text", reply)}
                transcripts = getattr(reply, "transcripts", None)
                if transcripts:
                    row["transcripts"] = list(transcripts)
                row.update({k: v for k, v in item.reference.items() if k not in row})
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            _log_failures(errors, failures)
            answered, failed = answered + len(replies), failed + len(failures)
            bar.update(len(batch))
    bar.close()
    write_manifest(manifest_path(predictions), {"inference_finished": _now(), "items_done": len(done) + answered,
                                                "items_failed": failed,
                                                "errors": str(errors) if failed else None})
    return predictions


def _chat(system: ChatSystem, conversations: list[list[dict[str, Any]]], generation: dict[str, Any]) -> list[Any]:
    replies = system.chat(conversations, **generation)
    if len(replies) != len(conversations):
        raise RuntimeError(f"system returned {len(replies)} replies for a batch of {len(conversations)}")
    return replies


def _answer(system: ChatSystem, batch: list[EvalItem], text_mode: bool,
            generation: dict[str, Any]) -> tuple[list[tuple[EvalItem, Any]], list[tuple[EvalItem, str]]]:
    """(item, reply) for the items answered, (item, reason) for those whose own input failed."""
    ready, failures = [], []
    for item in batch:
        try:
            ready.append((item, materialize(item.text_conversation if text_mode else item.conversation)))
        except ITEM_ERRORS as error:
            failures.append((item, one_line(error)))
    replies: list[tuple[EvalItem, Any]] = []
    try:
        if ready:
            replies = list(zip([item for item, _ in ready], _chat(system, [c for _, c in ready], generation)))
    except ITEM_ERRORS as error:
        if len(ready) == 1:
            failures.append((ready[0][0], one_line(error)))
        else:  # one bad item fails its whole batch: ask again one by one to find it
            for item, conversation in ready:
                try:
                    replies.append((item, _chat(system, [conversation], generation)[0]))
                except ITEM_ERRORS as single_error:
                    failures.append((item, one_line(single_error)))
    refused = [(item, str(reply.error)) for item, reply in replies if getattr(reply, "error", None)]
    return [(item, reply) for item, reply in replies if not getattr(reply, "error", None)], failures + refused


def one_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _audio_names(item: EvalItem) -> list[str]:
    return [entry["audio"].describe() if isinstance(entry["audio"], AudioRef) else str(entry["audio"])
            for message in item.conversation for entry in message.get("audios") or []]


def _log_failures(path: Path, failures: list[tuple[EvalItem, str]]) -> None:
    if not failures:
        return
    with open(path, "a", encoding="utf-8") as handle:
        for item, reason in failures:
            logger.warning("%s: %s", item.id, reason)
            handle.write(json.dumps({"id": item.id, "audio": _audio_names(item), "error": reason,
                                     "reference": item.reference}, ensure_ascii=False, default=str) + "\n")
