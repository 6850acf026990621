import json

import pytest

from desta_audio.eval import retention
from desta_audio.eval.report import write_report

from tests.eval.helpers import FakeSystem


def test_retention_rates_and_delta():
    def follows(conversation):  # a system that only ever writes lowercase prose
        return "a steady sound is heard"

    model = FakeSystem(follows)
    backbone = FakeSystem(lambda c: '"A STEADY SOUND."' if "capital letters" in c[-1]["content"] else "a steady sound")
    result = retention.retention_check(model, backbone, n=10, batch_size=4)
    # model: lowercase, <20 words, no comma, keyword "sound" -> 4 of 10; backbone: also capitals -> 5 of 10
    assert result.audio_rate == 40.0 and result.text_rate == 50.0
    assert result.delta == pytest.approx(-20.0)
    assert result.per_instruction["change_case:english_capital"] == {"audio": 0.0, "text": 100.0}
    items = retention.build_items(12, seed=1)
    assert len(items) == 12 and items[0].conversation[1]["audios"][0]["audio"].dtype.name == "float32"
    assert items[0].text_conversation[1]["content"].startswith("Speech Input: [00:00-00:02] (Audio category:")
    assert [i.text_conversation for i in retention.build_items(12, seed=1)] == [i.text_conversation for i in items]


def test_report_markdown_json_and_chart(tmp_path):
    (tmp_path / "mmau.scores.json").write_text(json.dumps({
        "benchmark": "mmau", "total": {"accuracy": 50.0}, "task": {"sound": {"accuracy": 60.0}},
        "scored_text": "raw response", "missing_outputs": 0}))
    (tmp_path / "voicebench.advbench.scores.json").write_text(json.dumps(
        {"benchmark": "voicebench", "subset": "advbench", "score": 90.0}))
    (tmp_path / "voicebench.commoneval.scores.json").write_text(json.dumps(
        {"benchmark": "voicebench", "subset": "commoneval", "score": 70.0}))
    outputs = write_report(tmp_path, label="desta-tiny")
    text = outputs["markdown"].read_text()
    assert "| total | 50.00 |" in text and "| **desta-tiny** | - | 60.00 | - | 50.00 |" in text
    assert "| DeSTA2.5-Audio | 56.29 | 70.57 | 71.17 | 66.00 |" in text
    assert "scored_text: raw response" in text
    summary = json.loads(outputs["json"].read_text())["summary"]
    assert summary["voicebench"]["overall"] == 80.0
    assert outputs["png"].stat().st_size > 1000


def test_report_shows_each_sakura_hop_once_beside_the_published_numbers(tmp_path):
    (tmp_path / "sakura.scores.json").write_text(json.dumps({
        "benchmark": "sakura", "average": {"single": 62.5, "multi": 40.0},
        "tracks": {"Animal": {"single": 62.5, "multi": 40.0}}}))
    text = write_report(tmp_path, label="desta-tiny")["markdown"].read_text()
    metric_rows = [line for line in text.splitlines() if line.startswith("| single") or line.startswith("| multi")]
    assert metric_rows == ["| single | 62.50 |", "| multi | 40.00 |"]
    assert "| **desta-tiny** | 40.00 | 62.50 |" in text  # columns multi, single, as the published rows
