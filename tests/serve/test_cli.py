"""`desta serve` / `desta demo` option wiring (model loading and the server loop replaced by fakes)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from desta_audio.cli import _register_subcommands, app
from tests.serve.helpers import FakeModel, free_port


@pytest.fixture
def captured(monkeypatch):

    seen: dict = {}
    monkeypatch.setattr("desta_audio.serve.cli._load_model", lambda ref, device=None, dtype=None: FakeModel())
    monkeypatch.setattr("desta_audio.serve.server.run_server", lambda app, **kwargs: seen.update(app=app, **kwargs))
    _register_subcommands()
    return seen


def test_serve_options_reach_the_app(captured):
    result = CliRunner().invoke(app, ["serve", "--model", "desta-tiny", "--port", "8123", "--api-key", "k",
                                      "--max-batch", "4", "--max-queue", "9", "--max-request-mb", "2",
                                      "--cors-origin", "http://a.example", "--demo", "--max-connections", "40"])
    assert result.exit_code == 0, result.output
    settings = captured["app"].state.settings
    assert (captured["host"], captured["port"]) == ("127.0.0.1", 8123)
    assert (settings.model_id, settings.api_key, settings.max_batch_size, settings.max_queue) == ("desta-tiny", "k", 4, 9)
    assert settings.max_request_bytes == 2 * 1024 * 1024 and settings.cors_origins == ["http://a.example"]
    assert any(getattr(route, "path", "") == "/demo" for route in captured["app"].routes)
    assert captured["log_level"] == "info" and captured["max_connections"] == 40


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_taken_port_fails_before_the_model_loads(command, monkeypatch):
    import socket

    loaded = []
    monkeypatch.setattr("desta_audio.serve.cli._load_model", lambda *a, **k: loaded.append(a) or FakeModel())
    _register_subcommands()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, [command, "--port", str(port)])
    assert result.exit_code == 2 and loaded == []
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "in use" in result.output


@pytest.mark.parametrize(("command", "option", "value"), [
    ("serve", "--port", "99999"), ("serve", "--port", "0"), ("serve", "--max-batch", "0"),
    ("serve", "--max-queue", "0"), ("serve", "--max-connections", "0"), ("serve", "--batch-window-ms", "-1"), ("serve", "--batch-refill", "nan"),
    ("serve", "--max-audio-seconds", "0"), ("serve", "--max-request-mb", "-2"), ("serve", "--request-timeout", "inf"),
    ("serve", "--max-tokens-limit", "0"), ("serve", "--audio-cache-mb", "-1"), ("serve", "--log-level", "loud"),
    ("demo", "--port", "70000"), ("demo", "--max-new-tokens", "0"), ("demo", "--audio-cache-mb", "-5"),
])
def test_bad_option_values_fail_before_the_model_loads(command, option, value, monkeypatch):
    loaded = []
    monkeypatch.setattr("desta_audio.serve.cli._load_model", lambda *a, **k: loaded.append(a) or FakeModel())
    _register_subcommands()
    result = CliRunner().invoke(app, [command, option, value])
    assert result.exit_code == 2 and loaded == []
    assert f"Invalid value for '{option}'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize(("option", "value", "message"), [
    ("--model", "no-such-model", "no-such-model"), ("--device", "bogus", "device 'bogus'"),
    ("--dtype", "float13", "float13"),
])
def test_a_bad_model_device_or_dtype_is_one_line(command, option, value, message):
    _register_subcommands()
    result = CliRunner().invoke(app, [command, "--port", str(free_port()), option, value])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_help_usage_promises_no_subcommands(command):
    _register_subcommands()
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert usage.split() == ["Usage:", "desta", command, "[OPTIONS]"]


def test_demo_names_its_address_without_gradios_launch_advice(monkeypatch):
    import gradio
    import httpx

    seen: dict = {}

    def serve_once(blocks):  # instead of waiting for Ctrl-C: check the page is up, then stop
        seen["status"] = httpx.get(blocks.local_url).status_code
        blocks.close()

    class DemoModel(FakeModel):
        def enable_audio_cache(self, max_mb: float) -> None:  # as DeSTAModel's; the fake has nothing to cache
            pass

    monkeypatch.setattr("desta_audio.serve.cli._load_model", lambda *a, **k: DemoModel())
    monkeypatch.setattr(gradio.Blocks, "block_thread", serve_once)
    _register_subcommands()
    port = free_port()
    result = CliRunner().invoke(app, ["demo", "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert seen["status"] == 200
    assert f"desta demo: open http://127.0.0.1:{port}/ in a browser" in result.output
    assert "share=True" not in result.output  # a command user cannot edit launch()
