"""Serving throughput: requests/s and p50/p95 latency at several client concurrencies, in one run.

    python benchmarks/bench_serve.py                           # desta-tiny: sequential, then 1 / 4 / 16 clients
    python benchmarks/bench_serve.py --model desta-mini --max-tokens 32 --concurrency 1 4 16
    python benchmarks/bench_serve.py --concurrency 4 --turns 0  # no multi-turn section
    python benchmarks/bench_serve.py --concurrency 16 --turns 0 --batch-refill 0   # the server's refill wait off

Starts `desta serve` as a subprocess on a free loopback port (so the clients do not share its interpreter), sends
the same mix of requests (a spoken clip + a question, greedy, `max_tokens` answer; every fourth request text-only)
with the official openai client from N threads, and prints a markdown table. The sequential client sends the same
requests one after another from the main thread, each waiting for the previous answer; the speedup column is
against it, and each level's greedy answers are compared with the sequential ones. This server runs with the audio
cache off, so a clip sent again costs what a new clip costs: the table measures batching, not reuse.

Then a multi-turn conversation about one clip, as an OpenAI client sends it (the whole history, clip included, on
every turn), against a server with the audio cache off and one with it on: latency per turn and the answers.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "The weather is sunny and warm today.",
    "Please remember to buy milk and bread on your way home.",
    "The train to Berlin leaves at seven thirty from platform four.",
    "I think the concert was wonderful, especially the piano solo.",
]
QUESTIONS = ["What did the speaker say?", "Is the speaker male or female?", "Summarise the clip in a few words.",
             "What is the topic of the clip?"]


def make_clips(folder: Path) -> list[bytes]:
    """Spoken sentences from espeak-ng when available, else tones (the server runs ASR on both)."""
    import numpy as np
    import soundfile as sf

    clips = []
    for index, sentence in enumerate(SENTENCES):
        path = folder / f"clip{index}.wav"
        if shutil.which("espeak-ng"):
            subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), sentence], check=True, capture_output=True)
            clips.append(path.read_bytes())
        else:
            t = np.arange(16_000 * 2) / 16_000
            buffer = io.BytesIO()
            sf.write(buffer, (0.3 * np.sin(2 * np.pi * (220 + 110 * index) * t)).astype("float32"), 16_000, format="WAV")
            clips.append(buffer.getvalue())
    return clips


def request(i: int, clips: list[bytes]) -> list[dict]:
    question = QUESTIONS[i % len(QUESTIONS)]
    if i % 4 == 3:
        return [{"role": "user", "content": f"In one sentence: {question.lower()} Answer about item {i}."}]
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(clips[i % len(clips)]).decode(), "format": "wav"}}
    return [{"role": "user", "content": [audio, {"type": "text", "text": question}]}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log: Path, audio_cache_mb: float) -> subprocess.Popen:
    command = [sys.executable, "-c", "from desta_audio.cli import main; main()", "serve", "--model", args.model,
               "--port", str(port), "--max-batch", str(args.max_batch), "--batch-refill", str(args.batch_refill),
               "--max-queue", "256", "--request-timeout", "600", "--audio-cache-mb", str(audio_cache_mb),
               "--dtype", args.dtype, "--log-level", "warning"]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)


@contextlib.contextmanager
def server_url(args: argparse.Namespace, folder: Path, audio_cache_mb: float):
    """A started `desta serve` (stopped afterwards), or the --url given."""
    if args.url is not None:
        yield args.url
        return
    url = f"http://127.0.0.1:{free_port()}"
    log = folder / f"server-{audio_cache_mb:g}.log"
    server = start_server(args, int(url.rsplit(":", 1)[1]), log, audio_cache_mb)
    try:
        wait_ready(url, server, log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def client_for(url: str):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("DESTA_API_KEY", "unused"), max_retries=0,
                         timeout=600)


FOLLOW_UPS = ["Is the speaker male or female?", "Summarise it in three words.", "What is the topic?",
              "Say it again, word for word."]


def multi_turn(client, model: str, clip: bytes, turns: int, max_tokens: int) -> tuple[list[float], list[str]]:
    """One conversation: the clip and a question, then follow-ups, each turn resending the whole history."""
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip).decode(), "format": "wav"}}
    messages = [{"role": "user", "content": [audio, {"type": "text", "text": "What did the speaker say?"}]}]
    latencies, answers = [], []
    for turn in range(turns):
        started = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=max_tokens)
        latencies.append(time.perf_counter() - started)
        answers.append(reply.choices[0].message.content)
        messages += [{"role": "assistant", "content": answers[-1]},
                     {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]}]
    return latencies, answers


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}); its log:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the server was not ready after {timeout_s:.0f} s; see {log}")


def run_level(client, model: str, clips: list[bytes], concurrency: int, requests: int, max_tokens: int) -> dict:
    """`concurrency` 0 is the sequential client (a plain loop); otherwise that many client threads."""
    def one(i: int) -> tuple[float, str]:
        started = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=request(i, clips), temperature=0,
                                               max_tokens=max_tokens)
        return time.perf_counter() - started, reply.choices[0].message.content

    started = time.perf_counter()
    if concurrency == 0:
        results = [one(i) for i in range(requests)]
    else:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    ordered = sorted(latency for latency, _ in results)
    return {
        "clients": concurrency,
        "requests": requests,
        "rps": requests / wall,
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "answers": [answer for _, answer in results],
    }


def main() -> None:
    from desta_audio.serve.api import ServeSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="desta-tiny")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64,
                        help="requests per concurrency level (at least 2x clients; 64 = 4 rounds of 16 clients, so the "
                        "first round's staggered start weighs less)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-refill", type=float, default=ServeSettings.batch_refill,
                        help="the server's --batch-refill (0: each batch takes only what is waiting)")
    parser.add_argument("--url", default=None, help="use an already running server instead of starting one "
                        "(started with --audio-cache-mb 0 for a fair table; no cache-on conversation then)")
    parser.add_argument("--turns", type=int, default=4, help="turns of the multi-turn conversation (0: skip it)")
    parser.add_argument("--audio-cache-mb", type=float, default=256.0, help="the cache-on server's audio cache")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="the server's precision (default: what `desta serve` picks on this CPU)")
    args = parser.parse_args()
    import torch

    from desta_audio.precision import cpu_summary, default_dtype, dtype_name

    args.dtype = args.dtype or dtype_name(default_dtype(torch.device("cpu")))

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        clips = make_clips(folder)
        with server_url(args, folder, audio_cache_mb=0) as url:
            client = client_for(url)
            run_level(client, args.model, clips, 0, 2, args.max_tokens)  # warm-up: first-call allocations
            # Every level sends the same requests (same indices), so greedy answers can be compared one to one.
            requests = max([args.requests] + [2 * c for c in args.concurrency])
            rows = [run_level(client, args.model, clips, c, requests, args.max_tokens)
                    for c in [0, *args.concurrency]]
            conversations = {}
            if args.turns:
                conversations["off"] = multi_turn(client, args.model, clips[1], args.turns, args.max_tokens)
        if args.turns and args.url is None:
            with server_url(args, folder, audio_cache_mb=args.audio_cache_mb) as url:
                client = client_for(url)
                multi_turn(client, args.model, clips[0], 1, args.max_tokens)  # warm-up on another clip
                conversations["on"] = multi_turn(client, args.model, clips[1], args.turns, args.max_tokens)

    sequential = rows[0]
    print(f"\nmodel {args.model}, {requests} requests per row ({requests - requests // 4} with a spoken clip + ASR, "
          f"{requests // 4} text-only), {args.max_tokens} new tokens (greedy), max batch {args.max_batch}, "
          f"batch refill {args.batch_refill:g}, "
          f"{args.dtype}; CPU: {cpu_summary()}\n")
    print("| clients | requests/s | p50 s | p95 s | speedup vs sequential | answers = sequential |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        label = "sequential" if row["clients"] == 0 else f"{row['clients']} concurrent"
        matched = sum(a == b for a, b in zip(row["answers"], sequential["answers"]))
        print(f"| {label} | {row['rps']:.2f} | {row['p50']:.2f} | {row['p95']:.2f} | "
              f"{row['rps'] / sequential['rps']:.2f}x | {matched}/{row['requests']} |")
    if "off" in conversations:
        print(f"\n{args.turns}-turn conversation about one spoken clip (each turn resends the history, clip "
              f"included), {args.max_tokens} new tokens (greedy), latency per turn in seconds\n")
        print("| audio cache | " + " | ".join(f"turn {t + 1}" for t in range(args.turns)) + " | turns 2+ mean | "
              "answers = cache off |")
        print("|---|" + "---:|" * (args.turns + 2))
        off_later = statistics.mean(conversations["off"][0][1:]) if args.turns > 1 else float("nan")
        for label, (latencies, answers) in conversations.items():
            later = statistics.mean(latencies[1:]) if args.turns > 1 else float("nan")
            matched = sum(a == b for a, b in zip(answers, conversations["off"][1]))
            print(f"| {label} | " + " | ".join(f"{x:.2f}" for x in latencies) +
                  f" | {later:.2f} ({off_later / later:.2f}x) | {matched}/{args.turns} |")


if __name__ == "__main__":
    main()
