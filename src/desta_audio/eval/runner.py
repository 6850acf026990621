"""Batched, resumable inference: items -> predictions JSONL (one row per item, flushed per batch) + a manifest.

A run interrupted at any point resumes by skipping the ids already in the predictions file (a half-written last
line is dropped). Scoring reads only the predictions file, so it never needs the model.
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


def predictions_path(out_dir: str | Path, benchmark: str, subset: str | None = None) -> Path:
    stem = benchmark if not subset else f"{benchmark}.{subset}"
    return Path(out_dir) / f"{stem}.predictions.jsonl"


def manifest_path(predictions: Path) -> Path:
    return predictions.with_name(predictions.name.replace(".predictions.jsonl", ".manifest.json"))


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


def _versions() -> dict[str, str]:
    info = {"python": platform.python_version()}
    for package in ("desta_audio", "torch", "transformers"):
        try:
            module = __import__(package)
            info[package] = getattr(module, "__version__", "unknown")
        except ImportError:
            continue
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
) -> Path:
    """Generate a reply for every item not yet in `predictions`; returns the predictions path."""
    predictions = Path(predictions)
    predictions.parent.mkdir(parents=True, exist_ok=True)
    generation = dict(generation or {})
    text_mode = bool(getattr(system, "uses_text_audio", False))
    if text_mode and any(item.text_conversation is None for item in items):
        raise ValueError("this system reads audio as text, but the benchmark defines no text version of its items")
    done = _completed_ids(predictions)
    todo = [item for item in items if item.id not in done]
    example = items[0] if items else None
    write_manifest(manifest_path(predictions), {
        **(manifest or {}),
        "system": getattr(system, "describe", lambda: {"class": type(system).__name__})(),
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
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=predictions.name, unit="item",
               disable=not progress)
    with open(predictions, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            conversations = [materialize(i.text_conversation if text_mode else i.conversation) for i in batch]
            replies = system.chat(conversations, **generation)
            if len(replies) != len(batch):
                raise RuntimeError(f"system returned {len(replies)} replies for a batch of {len(batch)}")
            for item, reply in zip(batch, replies):
                row = {"id": item.id, "response": getattr(reply, "text", reply)}
                if getattr(reply, "error", None):
                    row["error"] = reply.error  # scored as a missing output; a resumed run tries it again
                transcripts = getattr(reply, "transcripts", None)
                if transcripts:
                    row["transcripts"] = list(transcripts)
                row.update({k: v for k, v in item.reference.items() if k not in row})
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    write_manifest(manifest_path(predictions), {"inference_finished": _now(), "items_done": len(items)})
    return predictions
