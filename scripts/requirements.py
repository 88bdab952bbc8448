"""Print the requirement ranges of pyproject.toml's extras, nested extras resolved.

``scripts/lock.sh`` installs these ranges into a fresh virtualenv and freezes the result into
``requirements/test.txt``, the exact versions the test command installs.

Usage::

    python scripts/requirements.py test      # the ranges behind the `test` extra, one a line
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def requirements(extra: str) -> list[str]:
    """The runtime dependencies plus everything ``lora-rank[extra]`` pulls in, sorted.

    Example:
        >>> "pytest" in requirements("test") and "rich>=13" in requirements("test")
        True
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    seen: set[str] = set()
    todo, reqs = [extra], list(project["dependencies"])
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in extras[name]:
            if req.startswith("lora-rank["):
                todo.extend(req[len("lora-rank[") : -1].split(","))
            else:
                reqs.append(req)
    return sorted(set(reqs))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "test")))
