"""Timing and memory primitives shared by the benchmarks.

- ``stats(times)``: min / median / runs of a list of seconds;
- ``memory()``: peak and current resident memory of this process from ``/proc/self/status``
  (``VmHWM`` = peak RSS; ``RssAnon`` = anonymous pages now, i.e. heap, not mapped files;
  ``RssFile`` = file pages mapped now), in MiB;
- ``python_process(code, args, runs)``: time ``python -c code args...`` as whole processes;
  the code must end with ``REPORT``, which prints the memory and ``result`` as a JSON line;
- ``Method``: code to benchmark (imports, untimed setup, timed body that sets ``result``);
  ``time_call`` times the body in a fresh worker process after the imports, the setup and one
  warm-up call; ``time_process`` times the whole ``python -c`` process.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

# Appended to whole-process code: one JSON line with memory and the ``result`` variable.
REPORT = (
    "\nimport json as _j\n"
    "_s = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
    "print('BENCH ' + _j.dumps({'memory': {k: int(_s[k].split()[0]) / 1024 for k in "
    "('VmHWM', 'RssAnon', 'RssFile')}, 'result': result}))\n"
)

ENV = dict(
    os.environ,
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    PYTHONWARNINGS="ignore",
)
# One bytecode cache for every timed process, filled by the untimed warm-ups: with
# PYTHONDONTWRITEBYTECODE set (as on the machines here), each process would compile lora_rank's
# source checkout again while the installed libraries it is compared with load the .pyc files
# pip wrote; an installed lora_rank has its .pyc too. (benches/hub.py does the same.)
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
_PYCACHE = tempfile.mkdtemp(prefix="lora-rank-bench-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, ignore_errors=True)
ENV["PYTHONPYCACHEPREFIX"] = _PYCACHE


def stats(times: list[float]) -> dict[str, Any]:
    """Min and median of ``times`` (seconds) and the raw runs."""
    return {"min": min(times), "median": statistics.median(times), "runs": times}


def memory() -> dict[str, float]:
    """``VmHWM``, ``RssAnon`` and ``RssFile`` of this process, in MiB."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(status[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile")}


def _bench_line(stdout: str, what: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("BENCH "):
            return dict(json.loads(line[len("BENCH ") :]))
    raise RuntimeError(f"{what}: no BENCH line in its output:\n{stdout[-2000:]}")


def _run(cmd: list[str], what: str, cwd: str | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def python_process(
    code: str, args: list[str], runs: int, warmup: int = 1, cwd: str | None = None
) -> dict[str, Any]:
    """Time ``runs`` whole ``python -c code *args`` processes after ``warmup`` untimed ones.

    Returns ``stats`` plus the median memory (MiB) and the ``result`` of the last run."""
    times, mems, out = [], [], {}
    for i in range(warmup + runs):
        elapsed, stdout = _run([sys.executable, "-c", code, *args], f"python -c {args}", cwd)
        out = _bench_line(stdout, "python -c")
        if i >= warmup:
            times.append(elapsed)
            mems.append(out["memory"])
    memory = {k: statistics.median(m[k] for m in mems) for k in mems[0]}
    return {**stats(times), "memory": memory, "result": out.get("result")}


def emit(payload: dict[str, Any]) -> None:
    """Print ``payload`` as the worker's ``BENCH`` line (read back by the parent)."""
    print("BENCH " + json.dumps(payload), flush=True)


@dataclass(frozen=True)
class Method:
    """Code to benchmark on a path ``P``: ``imports``, then ``setup`` (untimed in "call"
    mode), then ``body``, which sets ``result`` (JSON-able: what the method found)."""

    name: str
    what: str  # what ``result`` is
    imports: str
    body: str
    setup: str = ""

    def process_code(self) -> str:
        """``python -c`` code for the whole process: ``P`` is ``sys.argv[1]``."""
        return f"{self.imports}\nimport sys\nP = sys.argv[1]\n{self.setup}{self.body}{REPORT}"


def time_call(method: Method, path: str, runs: int, cwd: str | None = None) -> dict[str, Any]:
    """``runs`` timed calls of ``method.body`` in a fresh worker, after a warm-up call."""
    cmd = [sys.executable, os.path.abspath(__file__), json.dumps(asdict(method)), path, str(runs)]
    _, stdout = _run(cmd, f"{method.name} call", cwd)
    return _bench_line(stdout, f"{method.name} call")


def time_process(method: Method, path: str, runs: int, cwd: str | None = None) -> dict[str, Any]:
    """``runs`` whole ``python -c`` processes of ``method`` after a warm-up one."""
    return python_process(method.process_code(), [path], runs, cwd=cwd)


def _call_worker(spec: str, path: str, runs: int) -> None:
    m = Method(**json.loads(spec))
    ns: dict[str, Any] = {"P": path}
    exec(m.imports, ns)
    exec(m.setup, ns)
    body = compile(m.body, f"<{m.name}>", "exec")
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        exec(body, ns)
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - start)
    emit({**stats(times), "memory": memory(), "result": ns["result"]})


if __name__ == "__main__":
    _call_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))
