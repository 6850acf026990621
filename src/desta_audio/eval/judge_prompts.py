"""Judge prompts: each benchmark's defaults, and replacements a user supplies (`--judge-prompts FILE`).

The defaults are this project's wording of each benchmark's judging protocol (same task, same fields, same output
format the verdict parser expects). Judge verdicts depend on wording, so anyone who needs the benchmark's own
prompt text puts it in a JSON file of this shape (print the defaults with `desta eval judge-prompts`):

    {"voicebench": {"open": {"system": "...", "user": "... {prompt} ... {response} ..."}}}

A replacement must use exactly the placeholders of the prompt it replaces, so no field is silently dropped; an empty
"system" sends no system message. Placeholders are filled in one pass, so a `{response}` written inside a model's
reply stays as it is.
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
    user: str  # template: "{field}" placeholders

    @property
    def fields(self) -> set[str]:
        return set(PLACEHOLDER.findall(self.user))

    def messages(self, **values: Any) -> list[dict[str, str]]:
        missing = self.fields - values.keys()
        if missing:
            raise KeyError(f"judge prompt needs {sorted(missing)}")
        user = PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.user)
        system = [{"role": "system", "content": self.system}] if self.system else []  # "": no system message
        return [*system, {"role": "user", "content": user}]


def resolve(defaults: dict[str, JudgePrompt], overrides: dict[str, JudgePrompt] | None) -> dict[str, JudgePrompt]:
    return {**defaults, **(overrides or {})}


def describe(prompts: dict[str, JudgePrompt], defaults: dict[str, JudgePrompt]) -> dict[str, Any]:
    """What a score file records: a digest per prompt, and which ones a user replaced."""
    return {"sha256": {name: hashlib.sha256(json.dumps(asdict(p), sort_keys=True).encode()).hexdigest()[:16]
                       for name, p in sorted(prompts.items())},
            "replaced": sorted(name for name, p in prompts.items() if p != defaults.get(name))}


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
        if prompt.fields != defaults[name].fields:
            raise ValueError(f"{where}: the user template must use exactly the placeholders "
                             f"{sorted('{' + f + '}' for f in defaults[name].fields)}, "
                             f"found {sorted('{' + f + '}' for f in prompt.fields)}")
        out[name] = prompt
    return out


def defaults_json(benchmarks: dict[str, dict[str, JudgePrompt]]) -> str:
    return json.dumps({b: {n: asdict(p) for n, p in prompts.items()} for b, prompts in benchmarks.items()},
                      indent=2, ensure_ascii=False)
