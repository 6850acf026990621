"""Judge prompts read from the user's checkout of a benchmark's official code, so judged scores use the official
wording without this project carrying that text.

The file is parsed with `ast` and only string constants are taken from it: nothing in it is imported or run. Each
benchmark's layout says which file holds the prompts, which names they are bound to, and how its placeholders map
onto the fields our scorers fill:

- VoiceBench `api_judge.py`: `meta_prompt_open` and `meta_prompt_qa` ({prompt}, {reference}, {response}), the system
  message from its `{"role": "system", "content": ...}` literal; filled as its script does, by chained replacements
  in the order prompt, reference, response;
- Speech-IFEval `script/llm_evaluation.py`: `system_prompt` and the f-string `content` of each
  `data["metric"] == ...` branch (cot, accuracy, wer); {model_response} is our {response}; one pass (an f-string);
- SAKURA `evaluation/llm_judge.py`: `system_prompt` and `user_prompt_template` with [QUESTION],
  [GROUND_TRUTH_ANSWER] and [MODEL_GENERATED_RESPONSE] for our {question}, {answer} and {response}; filled as its
  script does, by chained replacements in the order question, response, answer.

Without a checkout at hand the file is downloaded once from the benchmark's repository into the cache (users with a
network get the official wording by default, as hub ids give them the official weights); `HF_HUB_OFFLINE=1` or no
network leaves the project's wording, with a warning saying why.
"""

from __future__ import annotations

import ast
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from desta_audio.eval.judge_prompts import JudgePrompt, PromptSource, check_placeholders, file_sha256


class OfficialPromptError(ValueError):
    """The official file is missing, unreadable, or does not hold the prompts where its layout puts them."""


@dataclass(frozen=True)
class OfficialLayout:
    file: str  # inside the benchmark's repository
    extract: Callable[[ast.Module], dict[str, JudgePrompt]]


def _text(node: ast.AST | None, fields: dict[str, str] | None = None) -> str | None:
    """The string a constant expression evaluates to: a literal, `"...".strip()`, or an f-string whose only
    substitutions are plain names listed in `fields` (written as our `{field}` placeholders)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "strip"
            and not node.args and not node.keywords):
        inner = _text(node.func.value, fields)
        return None if inner is None else inner.strip()
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) and part.conversion == -1
                  and part.format_spec is None and part.value.id in (fields or {})):
                parts.append("{" + fields[part.value.id] + "}")
            else:
                return None
        return "".join(parts)
    return None


def _assigned(scope: ast.AST, name: str, fields: dict[str, str] | None = None) -> str | None:
    """The string last bound to `name` by a plain assignment anywhere within `scope`."""
    found = None
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = _text(node.value, fields)
            found = value if value is not None else found
    return found


def _required(scope: ast.AST, name: str, fields: dict[str, str] | None = None) -> str:
    value = _assigned(scope, name, fields)
    if value is None:
        raise OfficialPromptError(f"no string {name!r}")
    return value


def _system_message(tree: ast.Module) -> str | None:
    """The content of a `{"role": "system", "content": "..."}` literal."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            entries = {_text(k): v for k, v in zip(node.keys, node.values)}
            if _text(entries.get("role")) == "system" and _text(entries.get("content")) is not None:
                return _text(entries["content"])
    return None


def _voicebench(tree: ast.Module) -> dict[str, JudgePrompt]:
    from desta_audio.eval.benchmarks.voicebench import JUDGE_SYSTEM

    system = _system_message(tree) or JUDGE_SYSTEM
    return {"open": JudgePrompt(system, _required(tree, "meta_prompt_open"), _braced_chain("prompt", "response")),
            "qa": JudgePrompt(system, _required(tree, "meta_prompt_qa"),
                              _braced_chain("prompt", "reference", "response"))}


def _braced_chain(*fields: str) -> tuple[tuple[str, str], ...]:
    return tuple((field, "{" + field + "}") for field in fields)


SPEECH_IFEVAL_METRICS = {"cot": "reasoning", "accuracy": "accuracy", "wer": "transcript"}
SPEECH_IFEVAL_FIELDS = {"instruction": "instruction", "label": "label", "model_response": "response"}


def _metric_branch(node: ast.AST) -> str | None:
    """"accuracy" for `if data["metric"] == "accuracy":`."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)):
        return None
    left, right = node.test.left, node.test.comparators[0]
    if isinstance(left, ast.Subscript) and _text(left.slice) == "metric":
        return _text(right)
    return None


def _speech_ifeval(tree: ast.Module) -> dict[str, JudgePrompt]:
    prompts = {}
    for node in ast.walk(tree):
        metric = _metric_branch(node)
        if metric in SPEECH_IFEVAL_METRICS:
            branch = ast.Module(body=node.body, type_ignores=[])
            system = _assigned(branch, "system_prompt", SPEECH_IFEVAL_FIELDS)
            user = _assigned(branch, "content", SPEECH_IFEVAL_FIELDS)
            if system is not None and user is not None:
                prompts[SPEECH_IFEVAL_METRICS[metric]] = JudgePrompt(system, user)
    for metric, name in SPEECH_IFEVAL_METRICS.items():
        if name not in prompts:
            raise OfficialPromptError(f"no {name} prompt (system_prompt and content strings in the "
                                      f"data[\"metric\"] == {metric!r} branch)")
    return prompts


SAKURA_CHAIN = (("question", "[QUESTION]"), ("response", "[MODEL_GENERATED_RESPONSE]"),
                ("answer", "[GROUND_TRUTH_ANSWER]"))  # its script's replacement order


def _sakura(tree: ast.Module) -> dict[str, JudgePrompt]:
    user = _required(tree, "user_prompt_template")
    return {"grade": JudgePrompt(_required(tree, "system_prompt"), user, SAKURA_CHAIN)}


LAYOUTS = {
    "voicebench": OfficialLayout("api_judge.py", _voicebench),
    "speech_ifeval": OfficialLayout("script/llm_evaluation.py", _speech_ifeval),
    "sakura": OfficialLayout("evaluation/llm_judge.py", _sakura),
}


# Where each benchmark publishes that file. Speech-IFEval's is pinned to a commit; VoiceBench and SAKURA to their
# main branch. The download is kept once it parses, and every score records its address and sha256.
OFFICIAL_URLS = {
    "voicebench": "https://raw.githubusercontent.com/MatthewCYM/VoiceBench/main/api_judge.py",
    "speech_ifeval": "https://raw.githubusercontent.com/kehanlu/Speech-IFEval/"
                     "466fcb787759252806deda3636d396f515cf2190/script/llm_evaluation.py",
    "sakura": "https://raw.githubusercontent.com/ckyang1124/SAKURA/main/evaluation/llm_judge.py",
}
FETCH_TIMEOUT_S = 10.0
_FAILED_DOWNLOADS: dict[str, str] = {}  # url -> why its download failed, in this process
MAX_FILE_BYTES = 2_000_000  # a judge script is a few kB; anything this large is not one


def official_file(benchmark: str) -> str | None:
    """Where the benchmark's repository keeps its judge prompts, or None when no official judge prompt is known."""
    layout = LAYOUTS.get(benchmark)
    return layout.file if layout else None


def find_official_file(benchmark: str, start: str | Path) -> Path | None:
    """The benchmark's official prompt file in `start` or a folder above it (data usually lives inside the
    benchmark's checkout, e.g. Speech-IFEval/data/eval_data -> Speech-IFEval/script/llm_evaluation.py)."""
    layout = LAYOUTS.get(benchmark)
    if layout is None:
        return None
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        candidate = folder / layout.file
        if candidate.is_file():
            return candidate
    return None


def load_official(benchmark: str, path: str | Path) -> PromptSource:
    """Official prompts from the file, or from a checkout folder holding it at the layout's place."""
    from desta_audio.eval.benchmarks import get_benchmark

    layout = LAYOUTS.get(benchmark)
    if layout is None:
        raise OfficialPromptError(f"{benchmark} has no official judge prompt file to read")
    path = Path(path)
    if path.is_dir() or not path.exists():
        if not (path / layout.file).is_file():
            raise OfficialPromptError(f"{path}: no {layout.file} here; pass the {benchmark} checkout's folder or "
                                      "that file")
        path = path / layout.file
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as error:
        raise OfficialPromptError(f"{path}: cannot parse ({error})") from None
    defaults = get_benchmark(benchmark).JUDGE_PROMPTS
    try:
        prompts = layout.extract(tree)
        for name, prompt in prompts.items():
            check_placeholders(prompt, defaults[name], f"the {name} prompt")
    except ValueError as error:
        raise OfficialPromptError(f"{path}: {error}") from None
    return PromptSource(prompts, "official", str(path), file_sha256(path))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def fetch_official(benchmark: str) -> tuple[PromptSource | None, str]:
    """(the official prompts downloaded from the benchmark's repository, or None and why not).

    The file is kept in the cache only once it parses into every prompt, so a proxy's error page or a moved file is
    never reused; a cached copy is used without the network. A failed download is not tried again in this process
    (a run scores its main and reference predictions one after the other)."""
    from desta_audio.zoo import cache_root

    url = OFFICIAL_URLS.get(benchmark)
    if url is None:
        return None, f"no download address is known for {benchmark}"
    name = Path(LAYOUTS[benchmark].file).name
    cached = cache_root() / "official-judge-prompts" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if not cached.is_file():
        if _offline():
            return None, f"not downloaded from {url} (HF_HUB_OFFLINE is set)"
        if url not in _FAILED_DOWNLOADS:
            failure = _download(benchmark, url, cached)
            if failure:
                _FAILED_DOWNLOADS[url] = failure
        if url in _FAILED_DOWNLOADS:
            return None, _FAILED_DOWNLOADS[url]
    source = load_official(benchmark, cached)
    return PromptSource(source.prompts, source.origin, url, source.sha256), ""


def _download(benchmark: str, url: str, cached: Path) -> str | None:
    """Fetch `url` into `cached` when it parses as the benchmark's official file; otherwise say why not."""
    from desta_audio.data.store import atomic_writer

    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            body = response.read(MAX_FILE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"could not download {url} ({getattr(error, 'reason', None) or error})"
    if len(body) > MAX_FILE_BYTES:
        return f"{url} is larger than a judge script ({len(body)} bytes or more)"
    cached.parent.mkdir(parents=True, exist_ok=True)
    trial = cached.with_name(f".{cached.name}.{os.getpid()}.check.py")
    try:
        trial.write_bytes(body)
        load_official(benchmark, trial)
    except ValueError as error:
        return f"the file downloaded from {url} is not usable ({str(error).replace(str(trial), cached.name)})"
    finally:
        trial.unlink(missing_ok=True)
    with atomic_writer(cached, binary=True) as handle:
        handle.write(body)
    return None
