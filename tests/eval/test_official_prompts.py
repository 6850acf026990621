"""Official judge prompts read from a checkout of the benchmark's code. The checkouts here are generated files with
the official layout, variable names and placeholder syntax, holding dummy wording."""

import hashlib
import json
import textwrap
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from desta_audio.eval import cli
from desta_audio.eval.benchmarks import sakura, speech_ifeval, voicebench
from desta_audio.eval.judge_prompts import PROJECT_WORDING, JudgePrompt
from desta_audio.eval import official_prompts
from desta_audio.eval.official_prompts import OfficialPromptError, find_official_file, load_official
from desta_audio.eval.records import write_jsonl

from tests.eval.helpers import FakeSystem
from tests.eval.test_sakura_speech_ifeval import _sif_fixture

RAN = "the checkout's code was run"


def _write(path, source):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return path


def voicebench_checkout(root, qa=True):
    lines = [f'raise SystemExit("{RAN}")',
             'meta_prompt_open = """',
             "Dummy rubric, 1 to 5.",
             "IN: {prompt}",
             "OUT: {response}",
             '"""']
    if qa:
        lines += ['meta_prompt_qa = """', "Q: {prompt}", "REF: {reference}", "CAND: {response}", "yes or no?",
                  '""".strip()']
    lines += ["def generate(item):",
              '    messages = [{"role": "system", "content": "Dummy grader."}, {"role": "user", "content": item}]',
              "    return messages"]
    return _write(root / "api_judge.py", "\n".join(lines) + "\n")


def speech_ifeval_checkout(root):
    return _write(root / "script" / "llm_evaluation.py", '''
        import sys
        sys.exit("%s")

        def generate_eval_response(data):
            instruction = data["instruction"]
            label = data.get("label")
            model_response = data["response"]
            if data["metric"] == "accuracy":
                system_prompt = f"""Dummy accuracy rules. End with "Result: <YES or NO>"."""
                content = f"""Q={instruction}\\nGT={label}\\nR={model_response}"""
            elif data["metric"] == "wer":
                system_prompt = f"""Dummy transcript extraction."""
                content = f"""Q={instruction}\\nR={model_response}"""
            elif data["metric"] == "cot":
                system_prompt = f"""Dummy reasoning rules."""
                content = f"""IN={instruction}\\nR={model_response}"""
            return system_prompt, content
    ''' % RAN)


def sakura_checkout(root):
    return _write(root / "evaluation" / "llm_judge.py", f'''
        def query_llm(client, user_prompt):
            system_prompt = \'\'\'Dummy judge.\'\'\'
            return system_prompt

        if __name__ == "__main__":
            raise SystemExit("{RAN}")
            user_prompt_template = \'\'\'
            Q: [QUESTION]
            GT: [GROUND_TRUTH_ANSWER]
            R: [MODEL_GENERATED_RESPONSE]
            Explanation / Judgement please.
            \'\'\'
    ''')


def test_voicebench_prompts_are_read_without_running_the_file(tmp_path):
    path = voicebench_checkout(tmp_path / "VoiceBench")
    source = load_official("voicebench", tmp_path / "VoiceBench")
    assert source.origin == "official" and source.path == str(path)
    assert len(source.sha256) == 64
    open_prompt = source.prompts["open"]
    assert open_prompt == JudgePrompt("Dummy grader.", "\nDummy rubric, 1 to 5.\nIN: {prompt}\nOUT: {response}\n",
                                      (("prompt", "{prompt}"), ("response", "{response}")))
    assert source.prompts["qa"].messages(prompt="p", reference="r", response="c")[1]["content"] \
        == "Q: p\nREF: r\nCAND: c\nyes or no?"


def test_speech_ifeval_prompts_map_the_official_names_onto_ours(tmp_path):
    source = load_official("speech_ifeval", speech_ifeval_checkout(tmp_path / "Speech-IFEval"))
    assert set(source.prompts) == {"reasoning", "accuracy", "transcript"}
    accuracy = source.prompts["accuracy"].messages(instruction="I", label="L", response="R")
    assert accuracy == [{"role": "system", "content": 'Dummy accuracy rules. End with "Result: <YES or NO>".'},
                        {"role": "user", "content": "Q=I\nGT=L\nR=R"}]
    assert source.prompts["reasoning"].user == "IN={instruction}\nR={response}"


def test_sakura_prompt_placeholders_become_our_fields(tmp_path):
    source = load_official("sakura", sakura_checkout(tmp_path / "SAKURA"))
    messages = source.prompts["grade"].messages(question="Q?", answer="(a) dog", response="dog")
    assert messages[0] == {"role": "system", "content": "Dummy judge."}
    assert "Q: Q?\n    GT: (a) dog\n    R: dog" in messages[1]["content"]


def test_official_prompts_are_filled_by_chained_replacements_as_their_scripts_do(tmp_path):
    # VoiceBench's api_judge.py replaces {prompt}, then {reference}, then {response} in turn, and SAKURA's
    # llm_judge.py [QUESTION], then [MODEL_GENERATED_RESPONSE], then [GROUND_TRUTH_ANSWER]: a marker inside an
    # earlier value is replaced too. Expected texts worked out by hand from the dummy templates above.
    voicebench_checkout(tmp_path / "VoiceBench")
    qa = load_official("voicebench", tmp_path / "VoiceBench").prompts["qa"]
    assert qa.messages(prompt="Say {response}", reference="r", response="c {prompt}")[1]["content"] \
        == "Q: Say c {prompt}\nREF: r\nCAND: c {prompt}\nyes or no?"
    grade = load_official("sakura", sakura_checkout(tmp_path / "SAKURA")).prompts["grade"]
    user = grade.messages(question="Q [GROUND_TRUTH_ANSWER]?", answer="(a) dog",
                          response="It is [GROUND_TRUTH_ANSWER] [QUESTION]")[1]["content"]
    assert "Q: Q (a) dog?\n    GT: (a) dog\n    R: It is (a) dog [QUESTION]" in user
    # The project's own wording is filled in one pass: markers inside values stay as they are.
    from desta_audio.eval.benchmarks import sakura

    ours = sakura.JUDGE_PROMPTS["grade"].messages(question="{answer}?", answer="(a) dog", response="{question}")
    assert ours[1]["content"] == "Question: {answer}?\nGround truth: (a) dog\nResponse: {question}"


def test_missing_variable_or_unparsable_file_is_named(tmp_path):
    with pytest.raises(OfficialPromptError, match="no string 'meta_prompt_qa'"):
        load_official("voicebench", voicebench_checkout(tmp_path / "a", qa=False))
    broken = _write(tmp_path / "b" / "api_judge.py", "meta_prompt_open = (\n")
    with pytest.raises(OfficialPromptError, match="cannot parse"):
        load_official("voicebench", broken)
    with pytest.raises(OfficialPromptError, match="no api_judge.py"):
        load_official("voicebench", tmp_path / "c")
    odd = _write(tmp_path / "d" / "api_judge.py", 'meta_prompt_open = "{prompt} only"\nmeta_prompt_qa = "{prompt}"\n')
    with pytest.raises(OfficialPromptError, match="the open prompt must use exactly the placeholders"):
        load_official("voicebench", odd)


def test_discovery_looks_upward_from_the_data(tmp_path):
    path = speech_ifeval_checkout(tmp_path / "Speech-IFEval")
    data = tmp_path / "Speech-IFEval" / "data" / "eval_data"
    data.mkdir(parents=True)
    assert find_official_file("speech_ifeval", data) == path
    assert find_official_file("speech_ifeval", tmp_path / "elsewhere") is None
    assert find_official_file("mmau", data) is None


def _sif_run(tmp_path, monkeypatch, extra=()):
    data = _sif_fixture(tmp_path / "Speech-IFEval" / "data" / "eval_data")
    monkeypatch.setattr(cli, "_system", lambda *_: FakeSystem(lambda c: "because I reason"))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["speech-ifeval", "--data", str(data), "--out", str(out), "--judge", "fake",
                                          "--no-reference-backbone", *extra], env={"COLUMNS": "300"})
    return result, out


def test_run_uses_the_official_prompts_found_beside_the_data_and_records_them(tmp_path, monkeypatch):
    path = speech_ifeval_checkout(tmp_path / "Speech-IFEval")
    result, out = _sif_run(tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "project wording" not in result.output
    scores = json.loads((out / "speech_ifeval.scores.json").read_text())
    record = scores["judge_prompts"]
    assert record["origin"] == "official" and record["path"] == str(path) and len(record["file_sha256"]) == 64
    assert "Dummy reasoning rules." in (out / "judge-cache.jsonl").read_text()
    manifest = json.loads((out / "speech_ifeval.manifest.json").read_text())
    assert manifest["scoring"]["judge_prompts"]["origin"] == "official"


def test_without_a_checkout_the_project_wording_is_used_with_a_warning(tmp_path, monkeypatch):
    result, out = _sif_run(tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "project wording" in text and "scores may differ from official ones" in text
    assert "script/llm_evaluation.py" in text
    assert json.loads((out / "speech_ifeval.scores.json").read_text())["judge_prompts"]["origin"] \
        == "project wording"


def test_a_broken_checkout_found_by_discovery_falls_back_with_the_reason(tmp_path, monkeypatch):
    _write(tmp_path / "Speech-IFEval" / "script" / "llm_evaluation.py", "def generate_eval_response(data):\n    pass\n")
    result, out = _sif_run(tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "no reasoning prompt" in text and "project wording" in text


def test_explicit_official_path_must_work(tmp_path, monkeypatch):
    result, _ = _sif_run(tmp_path, monkeypatch, ["--judge-prompts", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no script/llm_evaluation.py" in " ".join(result.output.split())


def test_rescoring_takes_an_official_file_and_the_scorers_send_its_text(tmp_path):
    path = sakura_checkout(tmp_path / "SAKURA")
    predictions = tmp_path / "run" / "sakura.predictions.jsonl"
    predictions.parent.mkdir()
    write_jsonl(predictions, [{"id": "Animal/a/single", "track": "Animal", "hop": "single", "response": "dog",
                               "question": "What? (a) dog (b) cat", "answer": "(a) dog"}])
    result = CliRunner().invoke(cli.app, ["score", str(predictions), "--benchmark", "sakura", "--judge", "fake",
                                          "--judge-prompts", str(path)])
    assert result.exit_code == 0, result.output
    cached = [json.loads(line) for line in (tmp_path / "run" / "judge-cache.jsonl").read_text().splitlines()]
    assert cached[0]["messages"][0]["content"] == "Dummy judge."
    assert "Q: What? (a) dog (b) cat" in cached[0]["messages"][1]["content"]
    scores = json.loads((tmp_path / "run" / "sakura.scores.json").read_text())
    assert scores["judge_prompts"]["origin"] == "official" and scores["judge_params"] == sakura.JUDGE_PARAMS


def test_default_judge_settings_are_the_official_ones():
    assert (voicebench.JUDGE_MODEL, voicebench.JUDGE_SAMPLES) == ("gpt-4o-mini", 3)
    assert voicebench.JUDGE_PARAMS == {"max_tokens": 1024, "frequency_penalty": 0, "presence_penalty": 0,
                                       "temperature": 0.5, "top_p": 0.95}
    assert (sakura.JUDGE_MODEL, sakura.JUDGE_PARAMS) == ("gpt-4o-2024-11-20", {"temperature": 0, "top_p": 0.9})
    assert (speech_ifeval.JUDGE_MODEL, speech_ifeval.JUDGE_PARAMS) == ("gpt-4o-2024-11-20", {})


@contextmanager
def file_server(files: dict[str, tuple[int, bytes]]):
    """A plain HTTP server on loopback answering each path with (status, body); records the paths asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            asked.append(self.path)
            status, body = files.get(self.path, (404, b"Not Found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def _official_speech_ifeval_bytes(tmp_path) -> bytes:
    return speech_ifeval_checkout(tmp_path / "upstream").read_bytes()


def _point_download_at(monkeypatch, tmp_path, url):
    monkeypatch.setitem(official_prompts.OFFICIAL_URLS, "speech_ifeval", url)
    monkeypatch.setattr(official_prompts, "_FAILED_DOWNLOADS", {})  # each test starts as a new process would
    monkeypatch.setenv("DESTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_without_a_checkout_the_official_file_is_downloaded_once_and_recorded(tmp_path, monkeypatch):
    body = _official_speech_ifeval_bytes(tmp_path)
    with file_server({"/script/llm_evaluation.py": (200, body)}) as (root, asked):
        url = f"{root}/script/llm_evaluation.py"
        _point_download_at(monkeypatch, tmp_path, url)
        result, out = _sif_run(tmp_path / "a", monkeypatch)
        assert result.exit_code == 0, result.output
        assert "project wording" not in result.output
        record = json.loads((out / "speech_ifeval.scores.json").read_text())["judge_prompts"]
        assert record["origin"] == "official" and record["path"] == url
        assert "Dummy reasoning rules." in (out / "judge-cache.jsonl").read_text()
        assert record["file_sha256"] == hashlib.sha256(body).hexdigest()
        # A second run (here: another data folder and run) reads the kept copy; the server is not asked again.
        again, out_again = _sif_run(tmp_path / "b", monkeypatch)
        assert again.exit_code == 0, again.output
        assert json.loads((out_again / "speech_ifeval.scores.json").read_text())["judge_prompts"]["origin"] \
            == "official"
        assert asked == ["/script/llm_evaluation.py"]


@pytest.mark.parametrize("status, body, reason", [
    (404, b"Not Found", "could not download"),
    (200, b"<html>Sign in to the network</html>", "is not usable"),
])
def test_a_failed_or_unusable_download_falls_back_and_keeps_nothing(tmp_path, monkeypatch, status, body, reason):
    with file_server({"/f.py": (status, body)}) as (root, asked):
        _point_download_at(monkeypatch, tmp_path, f"{root}/f.py")
        result, out = _sif_run(tmp_path, monkeypatch)
        assert _sif_run(tmp_path / "again", monkeypatch)[0].exit_code == 0
    assert asked == ["/f.py"]  # one try per process: a run scores its main and reference predictions in turn
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert reason in text and "project wording" in text
    assert json.loads((out / "speech_ifeval.scores.json").read_text())["judge_prompts"]["origin"] == PROJECT_WORDING
    assert not list((tmp_path / "cache").rglob("*.py"))  # an error page is never kept to be reused


def test_offline_mode_and_an_unreachable_host_fall_back_without_a_download(tmp_path, monkeypatch):
    with file_server({}) as (root, asked):
        _point_download_at(monkeypatch, tmp_path, f"{root}/script/llm_evaluation.py")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        result, _ = _sif_run(tmp_path / "offline", monkeypatch)
        assert result.exit_code == 0 and asked == []
        assert "HF_HUB_OFFLINE" in " ".join(result.output.split())
    monkeypatch.delenv("HF_HUB_OFFLINE")
    result, _ = _sif_run(tmp_path / "closed", monkeypatch)  # the server is gone: connection refused
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "could not download" in text and "project wording" in text


def test_a_checkout_beside_the_data_wins_over_the_download(tmp_path, monkeypatch):
    path = speech_ifeval_checkout(tmp_path / "Speech-IFEval")
    with file_server({}) as (root, asked):
        _point_download_at(monkeypatch, tmp_path, f"{root}/script/llm_evaluation.py")
        result, out = _sif_run(tmp_path, monkeypatch)
    assert result.exit_code == 0 and asked == []
    assert json.loads((out / "speech_ifeval.scores.json").read_text())["judge_prompts"]["path"] == str(path)
