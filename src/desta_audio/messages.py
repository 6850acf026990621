"""Library errors as the one-line messages the commands print."""

from __future__ import annotations

import yaml


def yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, on one line: PyYAML's own text spans several lines and quotes the source."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem
