"""Which matrices the spectral engine scans: :class:`Plan` turns a report's modules into engine
jobs (name, byte segments per shard, columns, dtype) and remembers where each result goes.

A runtime matrix that transformers fuses from several stored tensors (an expert's
``gate_proj`` + ``up_proj``) is read as their row stack, an expert slice of a stored 3-D tensor
as its contiguous block. Conv1D weights (stored ``[in, out]``) need nothing special: singular
values do not change under transposition. A quantized weight (FP8 block-scaled, GPTQ, AWQ:
:mod:`lora_rank.inventory.quantization`) is read packed and dequantized by the engine.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Optional

from ..inventory import quantization
from ..report import Module, Report, Tensor

#: Bytes per element of the dtypes the engine decodes.
ELEMENT_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_EXPERT_INDEX = re.compile(r"(?:^|\.)experts\.(\d+)\.")

#: ``(shard index, absolute byte offset, rows)``: full rows of a matrix in one shard.
Segment = tuple[int, int, int]
#: ``(name, segments, columns, dtype)``: one matrix for the engine (``_core.spectra``).
Job = tuple[str, list[Segment], int, str]


def _element_size(t: Tensor) -> int:
    # Undecodable dtypes are refused by the engine, which names file and tensor.
    return ELEMENT_SIZE.get(t.dtype, 1)


def job_bytes(job: Job) -> int:
    """Stored bytes of the matrix a job reads.

    Example:
        >>> job_bytes(("w", [(0, 0, 4)], 8, "BF16"))
        64
    """
    return sum(rows for _, _, rows in job[1]) * job[2] * ELEMENT_SIZE.get(job[3], 1)


def _is_weight(key: str) -> bool:
    return key == "weight" or key.endswith(".weight")


class Plan:
    """Jobs for the engine and where each result goes: one job per 2-D weight (the row stack
    of the stored tensors a runtime matrix is fused from), one per expert slice of a MoE
    expert tensor, and for a quantized weight its packed tensor with the tuple the engine
    dequantizes it by; norms are skipped.

    Example:
        >>> import lora_rank
        >>> plan = Plan(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> len(plan.jobs), plan.jobs[0][0], plan.targets[0][0].kind
        (40, 'embeddings.position_embeddings.weight', 'embedding')
    """

    def __init__(self, report: Report) -> None:
        self.jobs: list[Job] = []
        #: Per job: None, or one engine quantization tuple per segment.
        self.quant: list[Optional[list[quantization.QuantTuple]]] = []
        #: (module, expert index or None) per job.
        self.targets: list[tuple[Module, Optional[int]]] = []
        self.tensors = {t.name: t for t in report.tensors}
        self.shards = report.shards
        self.warnings: list[str] = []
        for m in report.modules:
            if m.kind != "norm":
                self._add_module(m)

    def _segment(self, t: Tensor, offset: int, rows: int) -> Segment:
        return (t.shard, offset, rows)

    def _stack(self, name: str, parts: list[Tensor]) -> Optional[Job]:
        """One job reading ``parts`` (2-D, same columns and dtype) as their row stack."""
        if len({(t.shape[1], t.dtype) for t in parts}) != 1:
            return None
        segments = [self._segment(t, t.begin, t.shape[0]) for t in parts]
        return (name, segments, parts[0].shape[1], parts[0].dtype)

    def _add(
        self,
        job: Job,
        module: Module,
        expert: Optional[int],
        quant: Optional[list[quantization.QuantTuple]] = None,
    ) -> None:
        self.jobs.append(job)
        self.targets.append((module, expert))
        self.quant.append(quant)

    def _add_quantized(self, m: Module) -> None:
        """Jobs of a quantized module: the engine dequantizes while streaming."""
        found = quantization.stored_parts(m, self.tensors, self.shards)
        if len(found) == 1 and found[0][1].method == "mxfp4":
            q = found[0][1]
            blocks = self.tensors[q.weight_key]
            for e, (spec, offset, rows, cols) in enumerate(
                quantization.mxfp4_experts(q, self.tensors)
            ):
                seg = self._segment(blocks, offset, rows)
                self._add((f"{m.name}[{e}]", [seg], cols, q.storage_dtype), m, e, [spec])
            return
        parts = [q for _, q in found]
        specs = [quantization.engine_spec(t, q, self.tensors) for t, q in found]
        if m.num_experts is None:
            if len(parts) != 1:
                self.warnings.append(f"{m.name}: {len(parts)} quantized weights; no spectrum")
                return
            (spec, rows, cols), q = specs[0], parts[0]
            seg = self._segment(self.tensors[q.weight_key], self.tensors[q.weight_key].begin, rows)
            self._add((q.weight_key, [seg], cols, q.storage_dtype), m, None, [spec])
            return
        by_expert: dict[int, list[int]] = defaultdict(list)
        for i, q in enumerate(parts):
            match = _EXPERT_INDEX.search(q.weight_key)
            if match is None:
                self.warnings.append(f"{m.name}: expert tensors not recognised; no expert spectra")
                return
            by_expert[int(match.group(1))].append(i)
        for e, idx in sorted(by_expert.items()):
            widths = {specs[i][2] for i in idx}
            if len(widths) != 1 or (len(idx) > 1 and parts[idx[0]].method in ("gptq", "awq")):
                self.warnings.append(
                    f"{m.name}: the quantized parts of expert {e} cannot be read as one row "
                    "stack (GPTQ/AWQ store the transpose); no expert spectra"
                )
                return
        for e, idx in sorted(by_expert.items()):
            segs = [
                self._segment(
                    self.tensors[parts[i].weight_key],
                    self.tensors[parts[i].weight_key].begin,
                    specs[i][1],
                )
                for i in idx
            ]
            job = (f"{m.name}[{e}]", segs, specs[idx[0]][2], parts[idx[0]].storage_dtype)
            self._add(job, m, e, [specs[i][0] for i in idx])

    def _add_module(self, m: Module) -> None:
        if m.quantization is not None:
            self._add_quantized(m)
            return
        stored = [self.tensors[k] for k in m.checkpoint_keys if k in self.tensors]
        weights = [t for t in stored if _is_weight(t.name) and len(t.shape) in (2, 3)]
        if not weights:
            return
        if m.num_experts is not None:
            self._add_experts(m, weights)
            return
        two_d = [t for t in weights if len(t.shape) == 2]
        if not two_d:
            return
        name = two_d[0].name if len(two_d) == 1 else m.name
        job = self._stack(name, two_d)
        if job is None:
            self.warnings.append(
                f"{m.name}: its stored weights differ in columns or dtype; spectrum of "
                f"{two_d[0].name} only"
            )
            job = self._stack(two_d[0].name, two_d[:1])
        assert job is not None
        self._add(job, m, None)

    def _add_experts(self, m: Module, weights: list[Tensor]) -> None:
        three_d = [t for t in weights if len(t.shape) == 3]
        if len(three_d) == 1 and len(weights) == 1:
            t = three_d[0]
            experts, rows, cols = t.shape
            block = rows * cols * _element_size(t)
            for e in range(experts):
                seg = self._segment(t, t.begin + e * block, rows)
                self._add((f"{t.name}[{e}]", [seg], cols, t.dtype), m, e)
            return
        by_expert: dict[int, list[Tensor]] = defaultdict(list)
        for t in weights:
            match = _EXPERT_INDEX.search(t.name)
            if match is None or len(t.shape) != 2:
                by_expert.clear()
                break
            by_expert[int(match.group(1))].append(t)
        if not by_expert:
            self.warnings.append(
                f"{m.name}: expert tensors not recognised "
                f"({', '.join(t.name for t in weights[:3])}); no expert spectra"
            )
            return
        for e in sorted(by_expert):
            job = self._stack(f"{m.name}[{e}]", by_expert[e])
            if job is None:
                self.warnings.append(
                    f"{m.name}: the parts of expert {e} differ in columns or dtype; "
                    "no expert spectra"
                )
                return
        for e in sorted(by_expert):
            job = self._stack(f"{m.name}[{e}]", by_expert[e])
            assert job is not None
            self._add(job, m, e)


def shard_files(report: Report) -> list[tuple[str, int]]:
    """``(path, size its header implies)`` of every shard of ``report`` (a shard's data ends
    with its last tensor; -1 for a shard holding no tensor): what the engine checks each file
    against before and after reading it.

    Example:
        >>> import lora_rank
        >>> [size for _, size in shard_files(lora_rank.analyze(lora_rank.demo_checkpoint()))]
        [90868376]
    """
    sizes = [-1] * len(report.shards)
    for t in report.tensors:
        sizes[t.shard] = max(sizes[t.shard], t.end)
    return list(zip(report.shards, sizes))
