"""What an executor runs: a :class:`Scan` (one checkpoint's, or one comparison's, engine jobs
and where their bytes are), and its split into tasks (:func:`groups`): runs of consecutive
matrices of one shard, each at most a byte budget (a larger matrix alone), so that a task
reads one region of one file sequentially.

Example:
    >>> import lora_rank
    >>> scan = Scan.of_report(lora_rank.analyze(lora_rank.demo_checkpoint()))
    >>> len(scan.jobs), [len(g) for g in groups(scan, 30_000_000)]
    (40, [2, 1, 26, 11])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import UnsupportedFormatError
from ..inventory.quantization import QuantTuple
from ..report import RemoteShard, Report
from ..spectral.jobs import Job, Plan, job_bytes, shard_files

#: ``(job, quantization)`` of the matrix a delta job subtracts (``_core.spectra``'s ``minus``).
Minus = tuple[Job, Optional[list[QuantTuple]]]


@dataclass
class Scan:
    """Engine jobs and their shards: ``shards`` are ``(path, size its header implies)`` (what
    ``_core.spectra`` takes), or ``remote`` the hub shards of a remote checkpoint (read by
    HTTP range requests). ``plan``: the report's :class:`~lora_rank.spectral.jobs.Plan` the
    jobs come from (None for a comparison's updates).

    Example:
        >>> import lora_rank
        >>> scan = Scan.of_report(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> scan.total_bytes(), scan.remote is None
        (90728448, True)
    """

    shards: list[tuple[str, int]]
    jobs: list[Job]
    quant: list[Optional[list[QuantTuple]]]
    minus: Optional[list[Optional[Minus]]] = None
    remote: Optional[list[RemoteShard]] = None
    plan: Optional[Plan] = field(default=None, repr=False, compare=False)

    @classmethod
    def of_report(cls, report: Report) -> Scan:
        """The spectral scan of ``report`` (every job of its Plan).

        Example:
            >>> import lora_rank
            >>> Scan.of_report(lora_rank.analyze(lora_rank.demo_checkpoint())).jobs[0][0]
            'embeddings.position_embeddings.weight'
        """
        plan = Plan(report)
        if report.remote_shards is not None and any(q is not None for q in plan.quant):
            raise UnsupportedFormatError(
                f"{report.path}: spectra of a remote quantized checkpoint are not supported "
                "yet; analyze a local copy (the inventory works remotely)"
            )
        return cls(
            shards=shard_files(report),
            jobs=plan.jobs,
            quant=plan.quant,
            remote=report.remote_shards,
            plan=plan,
        )

    def job_bytes(self, i: int) -> int:
        """Stored bytes job ``i`` reads (both matrices of a difference)."""
        n = job_bytes(self.jobs[i])
        minus = self.minus[i] if self.minus is not None else None
        return n + (job_bytes(minus[0]) if minus is not None else 0)

    def total_bytes(self) -> int:
        """Stored bytes of every job."""
        return sum(self.job_bytes(i) for i in range(len(self.jobs)))

    def task(self, indices: list[int]) -> dict[str, Any]:
        """The arguments of one task over jobs ``indices`` (plain data: paths or URLs, byte
        ranges; never weight bytes)."""
        return {
            "shards": self.shards,
            "remote": self.remote,
            "jobs": [self.jobs[i] for i in indices],
            "quant": [self.quant[i] for i in indices],
            "minus": None if self.minus is None else [self.minus[i] for i in indices],
        }


def groups(scan: Scan, task_bytes: int) -> list[list[int]]:
    """Job indices of ``scan`` split into tasks: consecutive jobs (in the plan's order) whose
    first segment is in the same shard, at most ``task_bytes`` stored bytes each (a larger job
    alone).

    Example:
        >>> import lora_rank
        >>> scan = Scan.of_report(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> sum(len(g) for g in groups(scan, 1)) == len(scan.jobs) == len(groups(scan, 1))
        True
    """
    out: list[list[int]] = []
    shard, size = -1, 0
    for i, job in enumerate(scan.jobs):
        first = job[1][0][0] if job[1] else -1
        b = scan.job_bytes(i)
        if not out or first != shard or size + b > task_bytes:
            out.append([])
            shard, size = first, 0
        out[-1].append(i)
        size += b
    return out
