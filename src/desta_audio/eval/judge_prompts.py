"""Judge prompts: each benchmark's defaults, and replacements (`--judge-prompts PATH`).

The defaults are this project's wording of each benchmark's judging protocol (same task, same fields, same output
format the verdict parser expects). Judge verdicts depend on wording, so the official prompt text is used whenever
the user's checkout of the benchmark's code is at hand (`official_prompts`: read from that file at run time, never
copied here). A JSON file of this shape also replaces prompts (print the defaults with `desta eval judge-prompts`):

    {"voicebench": {"open": {"system": "...", "user": "... {prompt} ... {response} ..."}}}

A replacement must use exactly the placeholders of the prompt it replaces, so no field is silently dropped; an empty
"system" sends no system message. The project's prompts and a user's are filled in one pass, so a `{response}`
written inside a model's reply stays as it is; an official prompt is filled the way its script fills it (see
`JudgePrompt.chained`), so the judge gets the very text the official script would send.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class JudgePrompt:
    system: str
    user: str  # template: "{field}" placeholders, or the markers of `chained`
    # Some official scripts fill their template with chained str.replace calls, one field after the other, so a
    # value put in early is searched by the later replacements (a reply holding "[GROUND_TRUTH_ANSWER]" gets the
    # answer written into it). (field, marker) pairs in the script's order reproduce that; empty: one pass.
    chained: tuple[tuple[str, str], ...] = ()

    @property
    def fields(self) -> set[str]:
        if self.chained:
            return {field for field, marker in self.chained if marker in self.user}
        return set(PLACEHOLDER.findall(self.user))

    def messages(self, **values: Any) -> list[dict[str, str]]:
        missing = self.fields - values.keys()
        if missing:
            raise KeyError(f"judge prompt needs {sorted(missing)}")
        if self.chained:
            user = self.user
            for field, marker in self.chained:
                if field in values:
                    user = user.replace(marker, str(values[field]))
        else:
            user = PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.user)
        system = [{"role": "system", "content": self.system}] if self.system else []  # "": no system message
        return [*system, {"role": "user", "content": user}]


PROJECT_WORDING = "project wording"


@dataclass(frozen=True)
class PromptSource:
    """Replacement prompts and the file they came from: "official" (the benchmark's own code) or "user file"."""

    prompts: dict[str, JudgePrompt]
    origin: str
    path: str
    sha256: str  # of the whole file, so a report says exactly which text judged


def resolve(defaults: dict[str, JudgePrompt],
            overrides: PromptSource | dict[str, JudgePrompt] | None) -> dict[str, JudgePrompt]:
    replacements = overrides.prompts if isinstance(overrides, PromptSource) else overrides
    return {**defaults, **(replacements or {})}


def describe(prompts: dict[str, JudgePrompt], defaults: dict[str, JudgePrompt],
             source: PromptSource | dict[str, JudgePrompt] | None = None) -> dict[str, Any]:
    """What a score file records: where the prompts come from, a digest per prompt, and which ones were replaced."""
    replaced = sorted(name for name, p in prompts.items() if p != defaults.get(name))
    record: dict[str, Any] = {"origin": PROJECT_WORDING if not replaced else "user file"}
    if isinstance(source, PromptSource):
        record.update(origin=source.origin, path=source.path, file_sha256=source.sha256)
    record["sha256"] = {name: hashlib.sha256(json.dumps(_as_json(p), sort_keys=True).encode()).hexdigest()[:16]
                        for name, p in sorted(prompts.items())}
    record["replaced"] = replaced
    return record


def _as_json(prompt: JudgePrompt) -> dict[str, Any]:
    """The prompt as JSON: system and user, and the fill order only where there is one (so digests and printed
    defaults of one-pass prompts keep their shape)."""
    data = asdict(prompt)
    if not prompt.chained:
        del data["chained"]
    return data


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_overrides(path: str | Path, benchmark: str, defaults: dict[str, JudgePrompt]) -> dict[str, JudgePrompt]:
    """The replacements for `benchmark` in a JSON file (other benchmarks' entries are left for their runs)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read judge prompts ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object keyed by benchmark name")
    entries = data.get(benchmark) or {}
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: '{benchmark}' must map prompt names to {{'system': ..., 'user': ...}}")
    out = {}
    for name, entry in entries.items():
        where = f"{path}: {benchmark}.{name}"
        if name not in defaults:
            raise ValueError(f"{where}: unknown prompt; {benchmark} has {sorted(defaults)}")
        if not isinstance(entry, dict) or set(entry) - {"system", "user"}:
            raise ValueError(f"{where}: expected an object with 'system' and/or 'user' strings")
        if not all(isinstance(value, str) for value in entry.values()):
            raise ValueError(f"{where}: 'system' and 'user' must be strings")
        prompt = replace(defaults[name], **entry)
        check_placeholders(prompt, defaults[name], f"{where}: the user template")
        out[name] = prompt
    return out


def check_placeholders(prompt: JudgePrompt, default: JudgePrompt, what: str) -> None:
    if prompt.fields != default.fields:
        raise ValueError(f"{what} must use exactly the placeholders {_braced(default.fields)}, "
                         f"found {_braced(prompt.fields)}")


def _braced(fields: set[str]) -> list[str]:
    return sorted("{" + field + "}" for field in fields)


def defaults_json(benchmarks: dict[str, dict[str, JudgePrompt]]) -> str:
    return json.dumps({b: {n: _as_json(p) for n, p in prompts.items()} for b, prompts in benchmarks.items()},
                      indent=2, ensure_ascii=False)
