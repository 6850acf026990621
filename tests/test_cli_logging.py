"""The commands' logging: their own INFO lines are shown, an HTTP client's line per request is not."""

import subprocess
import sys

SCRIPT = """
import logging
from desta_audio.cli_logging import setup_logging
setup_logging()
logging.getLogger("desta_audio.train.recipe").info("validation at step 8")
for name in ("httpx", "httpx2", "httpcore", "urllib3"):
    logging.getLogger(name).info("HTTP Request: POST http://judge/v1/chat/completions 200 OK")
logging.getLogger("httpx").warning("a retry")
"""


def test_command_logging_shows_info_lines_but_not_each_http_request():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert "INFO desta_audio.train.recipe: validation at step 8" in result.stderr
    assert "HTTP Request" not in result.stderr
    assert "WARNING httpx: a retry" in result.stderr
