import json

from typer.testing import CliRunner

from desta_audio.data.cli import app
from desta_audio.data.stats import collect, write_histogram

runner = CliRunner()


def test_generate_then_stats_through_the_cli(speech_manifest, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", str(speech_manifest), "--out", str(out), "--target", "template",
                                 "--samples-per-clip", "3", "--shard-size", "4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "18 kept" in result.output
    assert len(list((out / "data").glob("shard-*.jsonl"))) == 5

    png = tmp_path / "lengths.png"
    result = runner.invoke(app, ["stats", str(out), "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "18 records kept" in result.output
    assert "Gender" in result.output and "female (9)" in result.output  # 3 female clips x 3 samples
    assert "speech" in result.output  # the dataset column
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_stats_counts_and_histogram(speech_manifest, tmp_path):
    runner.invoke(app, ["generate", str(speech_manifest), "--out", str(tmp_path), "--target", "template"])
    stats = collect(tmp_path)
    assert stats.records == 6 and sum(stats.by_dataset.values()) == 6
    assert stats.by_category == {"template": 6}
    assert len(stats.response_words) == 6 and stats.length_percentiles()["max"] >= 3
    written = write_histogram(stats, tmp_path / "h.png")
    assert written.stat().st_size > 5000


def test_describe_cli_writes_a_manifest_generate_accepts(speech_manifest, tmp_path):
    described = tmp_path / "described.jsonl"
    result = runner.invoke(app, ["describe", str(speech_manifest), "--out", str(described)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in described.read_text().splitlines()]
    assert rows[0]["seed_description"] == "[00:00-00:01] hello there (Gender: female, Emotion: Neutral, Duration: 0.5s)"
    assert rows[0]["description_format_version"] == "1.1"
    result = runner.invoke(app, ["generate", str(described), "--out", str(tmp_path / "o"), "--target", "template"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in next((tmp_path / "o" / "data").glob("*.jsonl")).read_text().splitlines()]
    assert rows[0]["id"] == "clip0.wav" and rows[0]["seed_description"].startswith("[00:00-00:01] hello there")
    assert rows[0]["messages"][1]["audios"][0] == {"audio": str(speech_manifest.parent / "clip0.wav"),
                                                   "text": "hello there"}


def test_openai_backend_needs_a_url(speech_manifest, tmp_path):
    result = runner.invoke(app, ["generate", str(speech_manifest), "--out", str(tmp_path), "--backend", "openai"])
    assert result.exit_code != 0 and "--base-url" in result.output


def test_prompts_command_shows_the_pool():
    result = runner.invoke(app, ["prompts", "--show", "3"])
    assert result.exit_code == 0, result.output
    assert "prompts;" in result.output and result.output.count("\n[") >= 2


def test_malformed_sources_end_with_one_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "hello there"}\nnot json\n')
    for command in (["annotate", str(manifest), "--out", str(tmp_path / "a.jsonl"), "--annotators", "duration"],
                    ["describe", str(manifest), "--out", str(tmp_path / "d.jsonl")],
                    ["generate", str(manifest), "--out", str(tmp_path / "g"), "--target", "template"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert "m.jsonl:2 is not valid JSON" in result.output and not isinstance(result.exception, ValueError)


def test_describe_and_annotate_never_lose_the_output_file(speech_manifest, tmp_path):
    precious = tmp_path / "precious.jsonl"
    precious.write_text('{"keep": "me"}\n')
    original = speech_manifest.read_text()
    attempts = [
        (["describe", str(speech_manifest), "-o", str(speech_manifest)], "is the source itself"),
        (["annotate", str(speech_manifest), "-o", str(speech_manifest), "--annotators", "duration"],
         "is the source itself"),
        (["describe", str(tmp_path / "nosuch.jsonl"), "-o", str(precious)], "does not exist"),
        (["describe", str(speech_manifest), "-m", str(tmp_path / "nosuch.yaml"), "-o", str(precious)], "nosuch.yaml"),
        (["annotate", str(tmp_path / "nosuch.jsonl"), "-o", str(precious)], "does not exist"),
    ]  # fmt: skip
    for command, message in attempts:
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and message in result.output, (command, result.output)
    assert speech_manifest.read_text() == original and precious.read_text() == '{"keep": "me"}\n'
    with speech_manifest.open("a") as handle:  # a bad row after good ones: nothing half-written either
        handle.write('{"audio": "clip0.wav", "duration": "long"}\n')
    result = runner.invoke(app, ["describe", str(speech_manifest), "-o", str(precious)])
    assert result.exit_code == 2 and precious.read_text() == '{"keep": "me"}\n'
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_usage_mistakes_end_with_one_line_and_exit_code_2(speech_manifest, tmp_path):
    pool = tmp_path / "mypool.jsonl"
    pool.write_text('{"id": "p1", "category": "open", "text": "Describe the audio."}\n')
    for command, message in [
        (["prompts", "--pool", str(pool)], "mypool.jsonl:1: missing ['weight']"),
        (["generate", str(speech_manifest), "-o", str(tmp_path / "g"), "--pool", str(pool)], "missing ['weight']"),
        (["generate", str(speech_manifest), "-o", str(tmp_path / "g"), "--dtype", "foo"], "dtype 'foo' is not one"),
    ]:  # fmt: skip
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and message in result.output, (command, result.output)
        assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_bad_options_and_outputs_end_with_one_line_and_exit_code_2(speech_manifest, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep\n")
    generate = ["generate", str(speech_manifest), "--target", "template"]
    for command, message in [
        (["generate", str(speech_manifest), "-o", str(tmp_path / "g"), "--backend", "foo"], "unknown backend 'foo'"),
        (["generate", str(speech_manifest), "-o", str(tmp_path / "g"), "--backend", "openai"], "needs --base-url"),
        (["stats", str(tmp_path / "nothing")], "has no data/ folder"),
        ([*generate, "-o", str(a_file)], "is a file; `generate` writes a folder"),
        (["describe", str(speech_manifest), "-o", str(tmp_path)], "is a folder; name the file"),
        (["describe", str(speech_manifest), "-o", str(a_file / "d.jsonl")], "is a file, not a folder"),
        (["annotate", str(speech_manifest), "-o", str(a_file / "d.jsonl"), "--annotators", "duration"],
         "is a file, not a folder"),
        (["generate", str(speech_manifest), "-o", str(tmp_path / "g"), "--target", "foo"],
         "unknown target 'foo' (--target): use self, other-llm, template"),
    ]:  # fmt: skip
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output, result.output
        assert result.output.count("\n") == 1, (command, result.output)
    assert a_file.read_text() == "keep\n" and not (tmp_path / "g").exists()


def test_annotate_lists_clips_with_unusable_audio_before_annotating(speech_manifest, tmp_path):
    with speech_manifest.open("a") as handle:
        handle.write(json.dumps({"audio": "gone.wav", "text": "where am I"}) + "\n")
    out = tmp_path / "annotated.jsonl"
    result = runner.invoke(app, ["annotate", str(speech_manifest), "-o", str(out), "--annotators", "duration"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "1 clip(s) have missing or unreadable audio: speech/gone.wav" in result.output
    assert not out.exists() and not out.with_suffix(".cache.sqlite").exists()  # stopped before any clip


def test_interrupted_generate_says_how_to_continue(speech_manifest, tmp_path, monkeypatch):
    from desta_audio.data import generate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "run_generation", interrupted)
    result = runner.invoke(app, ["generate", str(speech_manifest), "-o", str(tmp_path / "g"), "--target", "template"])
    assert result.exit_code == 130 and "rerun the same command to continue" in result.output, result.output


def test_unreachable_endpoint_is_a_runtime_failure_naming_the_url(speech_manifest, tmp_path, monkeypatch):
    import socket
    from functools import partial

    from desta_audio.data import backends

    monkeypatch.setattr(backends, "OpenAIBackend", partial(backends.OpenAIBackend, max_retries=0))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    result = runner.invoke(app, ["generate", str(speech_manifest), "-o", str(tmp_path / "g"), "--backend", "openai",
                                 "--base-url", url, "--model", "m"])  # fmt: skip
    assert result.exit_code == 1 and f"error: could not reach {url}" in result.output, result.output
    assert "Traceback" not in result.output


def test_generate_help_names_the_ray_extra_in_full():
    result = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "pip install 'desta-audio[ray]'" in result.output


def test_counts_below_one_are_refused_by_option_name(speech_manifest, tmp_path):
    for option in ("--samples-per-clip", "--shard-size", "--batch-size", "--concurrency", "--max-new-tokens"):
        result = runner.invoke(app, ["generate", str(speech_manifest), "-o", str(tmp_path / "g"), "--target",
                                     "template", option, "0"], env={"COLUMNS": "200"})
        assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
    assert not (tmp_path / "g").exists()
