"""Model-core speed on this machine: encoder, ASR, prefill, decode, batching and overhead against the bare LLM.

    python benchmarks/bench_model.py                       # desta-tiny and desta-mini
    python benchmarks/bench_model.py --models desta-tiny --new-tokens 32
    python benchmarks/bench_model.py --models desta-mini --dtype float32   # default: the package's own choice

Each model runs in its own subprocess so its peak RSS is its own. Ratios compare runs made in the same process
moments apart, so they hold on a noisy machine better than absolute times do.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "Hello! The weather in Paris is sunny today, so I am going to walk to the museum.",
    "Please remember to buy milk, eggs and fresh bread on your way home tonight.",
    "The train to Berlin leaves at seven thirty from platform four.",
    "I think the concert was wonderful, especially the piano solo at the end.",
]


def make_clips(directory: Path, count: int) -> list[str]:
    """Real speech from espeak-ng when available (varied voices and lengths), else tones."""
    import shutil

    import numpy as np
    import soundfile as sf

    paths = []
    for i in range(count):
        path = directory / f"clip{i}.wav"
        text = " ".join(SENTENCES[: 1 + i % len(SENTENCES)])
        if shutil.which("espeak-ng"):
            voice = ["en-us+m3", "en-us+f2", "en+m1", "en-us+f4"][i % 4]
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(140 + 10 * (i % 3)), "-w", str(path), text],
                           check=True)
        else:
            t = np.arange(16000 * (2 + i % 6)) / 16000
            sf.write(path, 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t), 16000)
        paths.append(str(path))
    return paths


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(model_name: str, new_tokens: int, batches: list[int], dtype: str) -> dict:
    import torch

    from desta_audio.audio import load_audio, split_windows
    from desta_audio.modeling import DeSTAModel

    torch.manual_seed(0)
    model = DeSTAModel.from_pretrained(model_name, dtype=getattr(torch, dtype))
    fixed = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}  # equal work for every variant
    with tempfile.TemporaryDirectory() as tmp:
        clips = [load_audio(p) for p in make_clips(Path(tmp), max(batches))]

    def conversation(i: int, transcript: str | None = None) -> list[dict]:
        return [{"role": "user", "content": "<|AUDIO|>\nWhat does the speaker say, and how do they sound?",
                 "audios": [{"audio": clips[i], "text": transcript}]}]

    result: dict = {"model": f"{model_name} ({dtype})",
                    "new_tokens": new_tokens}
    window = split_windows(clips[0])[:1]
    with torch.inference_mode():
        model.encode_audio_windows(window)  # warm-up
        result["encoder_ms_per_window"] = 1000 * timed(lambda: model.encode_audio_windows(window), 3)
        _, finals = model.encode_audio_windows(window)
        result["asr_ms_per_window"] = 1000 * timed(lambda: model.transcribe_windows(finals), 2)
        transcripts = [t for r in model.chat([conversation(i) for i in range(len(clips))], max_new_tokens=1)
                       for t in r.transcripts]
    result["example_transcript"] = transcripts[0]

    # Prefill and decode of the LLM on a real DeSTA prompt (transcript given, so ASR is not counted here).
    prompt = conversation(0, transcripts[0])
    with torch.inference_mode():
        batch, tokens, _ = model.build_batch([prompt])
        embeds = model.embed(batch, tokens)
        result["prompt_tokens"] = int(batch.input_ids.shape[1])
        # As generate() runs it: logits for the last position only (a full-vocabulary head over every prompt
        # position would add a third to a 0.5B model's prefill).
        keep = {"logits_to_keep": 1} if model.llm_model._supports_logits_to_keep() else {}
        result["prefill_ms"] = 1000 * timed(
            lambda: model.llm_model(inputs_embeds=embeds, attention_mask=batch.attention_mask, **keep), 3)
        chat_seconds = timed(lambda: model.chat([prompt], **fixed), 2)
        gen = {**fixed, "do_sample": False, **model.generation_defaults()}
        generate_seconds = timed(lambda: model.llm_model.generate(inputs_embeds=embeds,
                                                                  attention_mask=batch.attention_mask, **gen), 2)
    # Decode rate: the generate() call less its prefill, over the tokens after the first.
    result["decode_tokens_per_s"] = (new_tokens - 1) / max(generate_seconds - result["prefill_ms"] / 1000, 1e-3)

    # Overhead of the wrapper: a DeSTA turn minus its encoder and ASR work (reported above) against the bare LLM
    # generating the same number of tokens from a text prompt of the same length.
    def turn_without_audio_work() -> float:
        start = time.perf_counter()
        reply = model.chat([prompt], **fixed)[0]
        return time.perf_counter() - start - reply.timings["encode_s"] - reply.timings["asr_s"]

    ids = torch.randint(100, 1000, (1, result["prompt_tokens"]))
    bare_runs, turn_runs = [], []
    with torch.inference_mode():
        for _ in range(3):  # interleaved, so both see the same machine load
            bare_runs.append(timed(lambda: model.llm_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                                    **gen)))
            turn_runs.append(turn_without_audio_work())
    result["bare_llm_s"] = statistics.median(bare_runs)
    result["desta_llm_side_s"] = statistics.median(turn_runs)
    result["desta_turn_s"] = chat_seconds
    result["overhead_pct"] = 100 * (result["desta_llm_side_s"] - result["bare_llm_s"]) / result["bare_llm_s"]

    # Throughput: one batched chat() call against a loop of batch-1 calls, full pipeline including ASR.
    rows = []
    for size in batches:
        conversations = [conversation(i) for i in range(size)]
        sequential = timed(lambda: [model.chat([c], **fixed) for c in conversations])
        batched = timed(lambda: model.chat(conversations, **fixed))
        # The LLM side alone (audio tokens and transcripts already made): what batching does for generate().
        with torch.inference_mode():
            given = [conversation(i, transcripts[i]) for i in range(size)]
            singles = [model.build_batch([c])[:2] for c in given]
            together = model.build_batch(given)[:2]

            def generate(batch_and_tokens):
                batch, tokens = batch_and_tokens
                model.llm_model.generate(inputs_embeds=model.embed(batch, tokens),
                                         attention_mask=batch.attention_mask, **gen)

            llm_sequential = timed(lambda: [generate(one) for one in singles])
            llm_batched = timed(lambda: generate(together))
        rows.append({"batch": size, "sequential_req_s": size / sequential, "batched_req_s": size / batched,
                     "speedup": sequential / batched, "llm_speedup": llm_sequential / llm_batched})
    result["throughput"] = rows
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def table(results: list[dict]) -> str:
    lines = ["| model | encoder ms / 30 s window | ASR ms / window | prompt tokens | prefill ms | decode tok/s | "
             "peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['encoder_ms_per_window']:.0f} | {r['asr_ms_per_window']:.0f} | "
                     f"{r['prompt_tokens']} | {r['prefill_ms']:.0f} | {r['decode_tokens_per_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    lines += ["", "| model | batch | sequential req/s | batched req/s | speedup (target at 16: >= 4x) | "
              "LLM generate() alone: speedup |", "|---|---|---|---|---|---|"]
    for r in results:
        for row in r["throughput"]:
            lines.append(f"| {r['model']} | {row['batch']} | {row['sequential_req_s']:.2f} | "
                         f"{row['batched_req_s']:.2f} | {row['speedup']:.2f}x | {row['llm_speedup']:.2f}x |")
    lines += ["", "| model | new tokens | bare LLM generate s | DeSTA turn without encoder+ASR s | overhead "
              "(target <= 15%) | whole DeSTA turn s (transcript given) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['new_tokens']} | {r['bare_llm_s']:.2f} | {r['desta_llm_side_s']:.2f} | "
                     f"{r['overhead_pct']:.1f}% | {r['desta_turn_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["desta-tiny", "desta-mini"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="weights and compute type (default: what the models load in when none is asked for: "
                             "bfloat16 on CPUs with native bf16, else float32)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dtype is None:
        import torch

        from desta_audio.precision import default_dtype, dtype_name

        args.dtype = dtype_name(default_dtype(torch.device("cpu")))
    if args.one:
        print(json.dumps(measure(args.one, args.new_tokens, args.batches, args.dtype)))
        return
    results = []
    for name in args.models:
        command = [sys.executable, __file__, "--one", name, "--new-tokens", str(args.new_tokens), "--dtype",
                   args.dtype, "--batches", *map(str, args.batches)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(f"{name}: done", file=sys.stderr)
    from desta_audio.precision import cpu_summary

    print(f"CPU: {cpu_summary()}\n")
    print(table(results))
    print("\nexample transcripts: " + "; ".join(f"{r['model']}: {r['example_transcript']!r}" for r in results))


if __name__ == "__main__":
    main()
