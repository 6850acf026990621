"""`desta recipe mini`: the whole small recipe, from packaged sources to a trained desta-mini adapter and the
comparative study, in one resumable command.

Steps (each skipped or resumed when its output is already there; a rerun must use the first run's settings,
which OUT/recipe.json records):

1. corpus: `build_corpus` into OUT/corpus.
2. subset: a seeded sample of training clips, the same clips for every target source.
3. targets: `desta data generate` three ways: self (the desta-mini backbone, Qwen2.5-0.5B-Instruct), other-llm
   (SmolLM2-135M-Instruct writes the targets the Qwen-backed model learns from) and template (task-specific
   templated answers). Each into OUT/targets/<source>.
4. train: one desta-mini adapter per source with `recipe/train_mini.yaml`, the same number of records and steps,
   one shared feature cache. OUT/runs/<source>/final is the adapter.
5. evaluate: held-out attribute questions and instruction-following retention (`recipe/heldout.py`) for each
   adapter, the untrained adapter and the text-only backbone reading the seed descriptions.
6. report: OUT/report.md (table), OUT/report.json and OUT/report.png; OUT/adapter is the self-generated
   adapter in bfloat16, exactly as the package ships it for the desta-mini preset.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from desta_audio.data.store import atomic_write_text, atomic_writer

logger = logging.getLogger(__name__)

# source -> (data generate's --target, generator model)
TARGET_SOURCES: dict[str, tuple[str, str | None]] = {
    "self": ("self", "qwen2.5-0.5b-instruct"),
    "other-llm": ("other-llm", "smollm2-135m-instruct"),
    "template": ("template", None),
}
UNTRAINED = "untrained"
TEXT_BACKBONE = "text-backbone"
SYSTEM_LABELS = {
    "self": "self-generated (Qwen2.5-0.5B, the backbone)",
    "other-llm": "other LLM (SmolLM2-135M)",
    "template": "templated targets",
    UNTRAINED: "untrained adapter",
    TEXT_BACKBONE: "text-only backbone reading the seed description",
}


@dataclass(frozen=True)
class RecipeSettings:
    out_dir: Path
    base: str = "desta-mini"  # the preset whose adapter is trained (tests use desta-tiny)
    corpus_size: int = 3500
    clips: int = 1100  # training clips that get targets, the same for every source
    records: int = 768  # records each adapter trains on (the shared data budget)
    seed: int = 0
    generator_dtype: str | None = None  # None: the package's choice for this CPU (bf16 only where it is native)
    generator_batch: int = 16
    max_new_tokens: int = 128  # longer answers are quarantined as truncated
    per_question: int = 50
    instructions: int = 40
    eval_dtype: str | None = None  # as generator_dtype
    eval_batch: int = 16

    @property
    def corpus_dir(self) -> Path:
        return self.out_dir / "corpus"

    @property
    def subset_path(self) -> Path:
        return self.corpus_dir / f"subset-{self.clips}.jsonl"  # beside the audio, so relative paths resolve

    def targets_dir(self, source: str) -> Path:
        return self.out_dir / "targets" / source

    def run_dir(self, source: str) -> Path:
        return self.out_dir / "runs" / source


# ------------------------------------------------------------------------------------------------ steps


def build_corpus_step(settings: RecipeSettings, progress: bool = True) -> None:
    from desta_audio.recipe.corpus import build_corpus, check_build_settings
    from desta_audio.recipe.resume_check import START_OVER

    if (settings.corpus_dir / "corpus.json").exists():
        check_build_settings(settings.corpus_dir, settings.corpus_size, settings.seed,
                             advice=f"give --corpus-size and --seed as built, or {START_OVER}")
        logger.info("corpus: already built in %s", settings.corpus_dir)
        return
    build_corpus(settings.corpus_dir, size=settings.corpus_size, seed=settings.seed, progress=progress)


def subset_step(settings: RecipeSettings) -> Path:
    if settings.subset_path.exists():
        return settings.subset_path
    lines = (settings.corpus_dir / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < settings.clips:
        raise ValueError(f"the corpus has {len(lines)} training clips, fewer than --clips {settings.clips}")
    random.Random(settings.seed).shuffle(lines)
    partial = settings.subset_path.with_suffix(".partial")
    partial.write_text("".join(lines[: settings.clips]), encoding="utf-8")
    partial.replace(settings.subset_path)
    return settings.subset_path


def targets_step(settings: RecipeSettings, source: str, progress: bool = True) -> None:
    from desta_audio.data import backends
    from desta_audio.data.generate import GenerationSettings, run_generation
    from desta_audio.data.prompts import PromptPool
    from desta_audio.data.sources import read_source
    from desta_audio.data.store import Decoding
    from desta_audio.precision import dtype_name

    target, model = TARGET_SOURCES[source]
    generation = GenerationSettings(
        target_source=target,
        decoding=Decoding(do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=settings.max_new_tokens),
        seed=settings.seed,
        shard_size=64,
    )
    if target == "template":
        backend, pool = backends.TemplateBackend(), None
    else:
        backend = backends.TransformersBackend(model, batch_size=settings.generator_batch, device="cpu",
                                               dtype=dtype_name(cpu_dtype(settings.generator_dtype)))  # fmt: skip
        pool = PromptPool.load(None)
    summary = run_generation(read_source(settings.subset_path), backend, settings.targets_dir(source), generation,
                             pool, progress=progress)  # fmt: skip
    logger.info("targets %s: %d kept, %d quarantined, %d already done", source, summary.kept, summary.quarantined,
                summary.skipped)


def kept_records(settings: RecipeSettings, source: str) -> int:
    from desta_audio.train.records import read_records

    return len(read_records(settings.targets_dir(source) / "data"))


def cpu_dtype(name: str | None) -> Any:
    """A recipe dtype setting: the named one, or the package's choice on this CPU (bf16 where it is native; emulated,
    bf16 generates and trains 3-4x slower than fp32)."""
    import torch

    from desta_audio.precision import default_dtype, parse_dtype

    return parse_dtype(name) if name else default_dtype(torch.device("cpu"))


def train_config(settings: RecipeSettings, source: str, records: int) -> Any:
    import torch

    from desta_audio.precision import default_dtype
    from desta_audio.train.config import load_config

    # bf16 autocast where the hardware computes bf16 (2.2x fp32 per step there); a CPU without it emulates bf16 and
    # trains 3-4x slower than in fp32 (README, "Training speed on this machine").
    native_bf16 = default_dtype(torch.device("cuda" if torch.cuda.is_available() else "cpu")) == torch.bfloat16
    config_path = resources.files("desta_audio.recipe") / "train_mini.yaml"
    return load_config(Path(str(config_path)), [
        f"run.precision={'bf16' if native_bf16 else 'fp32'}",
        f"model.base={settings.base}",
        f"data.train={settings.targets_dir(source) / 'data'}",
        f"data.max_records={records}",
        f"run.output_dir={settings.run_dir(source)}",
        f"cache.dir={settings.out_dir / 'feature-cache'}",
        f"run.seed={42 + settings.seed}",
    ])  # fmt: skip


def train_step(settings: RecipeSettings, source: str, records: int, progress: bool = True) -> Path:
    from desta_audio.recipe.resume_check import START_OVER
    from desta_audio.train import resume
    from desta_audio.train.config import ConfigError
    from desta_audio.train.recipe import Trainer

    final = settings.run_dir(source) / "final"
    if (final / "model.safetensors").exists():
        logger.info("train %s: already trained (%s)", source, final)
        return final
    config = train_config(settings, source, records)
    config.run.progress = progress
    try:
        trainer = Trainer(config).setup()
    except ConfigError as error:  # its checkpoint has another config (e.g. the packaged train_mini.yaml changed)
        # The recipe sets run.output_dir itself: say what a recipe user can do instead.
        advice = f"{START_OVER} (or delete {settings.run_dir(source)} to retrain this adapter alone)"
        raise ConfigError(f"training the {source} adapter: {str(error).replace(resume.START_OVER, advice)}") from None
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    assert result.final_adapter is not None
    return result.final_adapter


# ------------------------------------------------------------------------------------------------ evaluation


def heldout_items(settings: RecipeSettings) -> list[Any]:
    from desta_audio.data.describe import describe
    from desta_audio.data.sources import read_source
    from desta_audio.recipe.heldout import build_items

    manifest = settings.corpus_dir / "heldout.jsonl"
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        row["audio"] = str(settings.corpus_dir / row["audio"])
    descriptions = {item.id: describe(item) for item in read_source(manifest)}
    return build_items(rows, descriptions, per_question=settings.per_question, instructions=settings.instructions,
                       seed=settings.seed)  # fmt: skip


def transcripts_for(model: Any, audios: list[str], path: Path, batch: int = 16) -> dict[str, str]:
    """Whisper transcripts of the held-out clips, made once and given to every system (they share the encoder)."""
    import torch

    from desta_audio.processing import AudioRef

    done: dict[str, str] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    pending = sorted(set(audios) - set(done))
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for start in range(0, len(pending), batch):
            chunk = pending[start:start + batch]
            for audio, prepared in zip(chunk, model.prepare_audios([AudioRef(a, None) for a in chunk]), strict=True):
                done[audio] = prepared.transcript
            # After every batch, so an interrupted evaluation does not transcribe these clips again.
            atomic_write_text(path, json.dumps(done, ensure_ascii=False, indent=0))
    return done


def evaluate_step(settings: RecipeSettings, sources: list[str], progress: bool = True) -> dict[str, dict[str, float]]:
    from tqdm.auto import tqdm

    from desta_audio.eval.systems import TextBackbone
    from desta_audio.modeling import DeSTAModel
    from desta_audio.recipe.heldout import predict, read_predictions, score

    items = heldout_items(settings)
    eval_dir = settings.out_dir / "eval"
    dtype = cpu_dtype(settings.eval_dtype)
    systems = [UNTRAINED, *sources]
    results: dict[str, dict[str, float]] = {}
    transcripts: dict[str, str] | None = None
    for name in [*systems, TEXT_BACKBONE]:
        reference = settings.base if name in (UNTRAINED, TEXT_BACKBONE) else str(settings.run_dir(name) / "final")
        model = DeSTAModel.from_pretrained(reference, dtype=dtype, device="cpu", fresh_adapter=name == UNTRAINED)
        if transcripts is None:
            transcripts = transcripts_for(model, sorted({i.audio for i in items}), eval_dir / "transcripts.json")
        system = TextBackbone.from_desta(model) if name == TEXT_BACKBONE else model
        predictions = eval_dir / f"{name}.jsonl"
        already = len(read_predictions(predictions).keys() & {i.id for i in items})
        with tqdm(total=len(items), initial=already, desc=f"evaluating {name}", unit="q", disable=not progress) as bar:
            replies = predict(system, items, predictions, audio=name != TEXT_BACKBONE,
                              transcripts=transcripts, batch_size=settings.eval_batch, progress=bar.update)
        results[name] = score(items, replies)
        del model, system
    return results


# ------------------------------------------------------------------------------------------------ report

COLUMNS = ("attributes", "gender", "language", "category", "noise_level", "content", "instruction")
COLUMN_TITLES = {"attributes": "attributes (all)", "noise_level": "noise level", "content": "what was said",
                 "instruction": "instruction following"}


def write_report(settings: RecipeSettings, results: dict[str, dict[str, float]], facts: dict[str, Any]) -> Path:
    from desta_audio.eval.ifeval import forgetting_delta

    text_rate = results[TEXT_BACKBONE].get("instruction", 0.0)
    lines = ["| system | " + " | ".join(COLUMN_TITLES.get(c, c) for c in COLUMNS) + " | forgetting Δ |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    for name, scores in results.items():
        delta = None if name == TEXT_BACKBONE else forgetting_delta(scores.get("instruction", 0.0), text_rate)
        cells = [f"{scores[c]:.1f}" if c in scores else "-" for c in COLUMNS]
        lines.append(f"| {SYSTEM_LABELS[name]} | " + " | ".join(cells) + f" | {'-' if delta is None else f'{delta:+.1f}%'} |")
    table = "\n".join(lines)
    body = (f"# Small recipe: held-out results\n\n{table}\n\nAccuracy (%) by consecutive-words match against the "
            "clip's metadata label; instruction following: Speech-IFEval rule checkers (%); forgetting Δ = "
            "(audio rate - text rate) / text rate x 100 against the text-only backbone reading the seed "
            "descriptions (whose attribute scores read the labels from the description: a ceiling, not a "
            "competitor).\n\n```json\n" + json.dumps(facts, indent=2, default=str) + "\n```\n")  # fmt: skip
    report = settings.out_dir / "report.md"
    atomic_write_text(report, body)
    atomic_write_text(settings.out_dir / "report.json", json.dumps({"results": results, "facts": facts}, indent=2,
                                                                   default=str))  # fmt: skip
    plot_report(results, settings.out_dir / "report.png")
    return report


def plot_report(results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for index, name in enumerate(names):
        values = [results[name].get(c, 0.0) for c in COLUMNS]
        ax.bar([k + index * width for k in range(len(COLUMNS))], values, width, label=SYSTEM_LABELS[name])
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(COLUMNS))],
                  [COLUMN_TITLES.get(c, c) for c in COLUMNS])
    ax.set_ylabel("% correct / followed")
    ax.set_ylim(0, 100)
    ax.set_title("desta-mini small recipe: held-out attribute accuracy and instruction following")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_writer(path, binary=True) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def export_adapter(final_dir: Path, out_dir: Path) -> Path:
    """config.json + the adapter in bfloat16 (half the size; every weight is cast on loading anyway)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(final_dir / "config.json", out_dir / "config.json")
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(str(final_dir / "model.safetensors")).items()}
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


# ------------------------------------------------------------------------------------------------ driver


def check_numbers(settings: RecipeSettings) -> None:
    """Refuse counts that cannot work before recipe.json records them (a rerun must repeat recorded settings)."""
    from desta_audio.recipe.corpus import check_at_least_one, plan_corpus
    from desta_audio.recipe.resume_check import recorded_settings

    check_at_least_one(corpus_size=settings.corpus_size, clips=settings.clips, records=settings.records)
    if recorded_settings(settings.out_dir) is not None:
        return  # checked when they were recorded; a rerun with others is refused with the differences
    plans, _ = plan_corpus(settings.corpus_size, settings.seed)  # planning is fast: no audio is made
    train_clips = sum(plan.split == "train" for plan in plans)
    if settings.clips > train_clips:
        raise ValueError(f"--clips {settings.clips} is more than the {train_clips} training clips of a "
                         f"--corpus-size {settings.corpus_size} corpus; lower --clips or raise --corpus-size")


def run_recipe(settings: RecipeSettings, sources: list[str] | None = None, progress: bool = True,
               echo: Callable[[str], None] = print) -> Path:
    """Every step in order; rerunning resumes where the last run stopped."""
    from desta_audio.recipe.resume_check import check_budget, check_settings

    sources = sources or list(TARGET_SOURCES)
    check_numbers(settings)
    check_settings(settings.out_dir, {k: v for k, v in asdict(settings).items() if k != "out_dir"})
    echo("[1/6] corpus")
    build_corpus_step(settings, progress)
    echo("[2/6] training subset")
    subset_step(settings)
    for source in sources:
        echo(f"[3/6] targets: {source}")
        targets_step(settings, source, progress)
    kept = {source: kept_records(settings, source) for source in sources}
    budget = min([settings.records, *kept.values()])
    if budget < settings.records:
        echo(f"only {budget} records kept for some source ({kept}); every adapter trains on {budget}")
    check_budget(settings.out_dir, budget, kept)
    for source in sources:
        echo(f"[4/6] train: {source} ({budget} records)")
        train_step(settings, source, budget, progress)
    echo("[5/6] evaluate on the held-out split")
    results = evaluate_step(settings, sources, progress)
    echo("[6/6] report")
    facts = {"settings": {k: str(v) for k, v in asdict(settings).items()}, "records_per_adapter": budget,
             "kept_targets": kept}  # fmt: skip
    if "self" in sources:
        export_adapter(settings.run_dir("self") / "final", settings.out_dir / "adapter")
    return write_report(settings, results, facts)
