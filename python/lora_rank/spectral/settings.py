"""The spectral solver's settings: one frozen :class:`SpectralSettings`, validated once.

Its defaults are the only ones: :func:`lora_rank.analyze`, :func:`~lora_rank.spectral.compute.
compute_spectra`, :func:`~lora_rank.recommend.strategies.recommend` and the CLI take one of
these (or overrides of its fields), and every value is passed on to the Rust engine, which only
validates them.

Example:
    >>> s = SpectralSettings(top_k=8)
    >>> s.top_k, s.method, s.rtol, s.max_iter
    (8, 'auto', 0.003, 24)
    >>> SpectralSettings(method="svd")
    Traceback (most recent call last):
    ...
    lora_rank.errors.ConfigError: method must be one of auto, randomized, exact, not 'svd'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError

#: Solver methods: ``"exact"`` for small matrices and ``"randomized"`` otherwise (``"auto"``).
METHODS = ("auto", "randomized", "exact")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SpectralSettings:
    """How spectra are computed (see :mod:`lora_rank.spectral.compute`).

    Example:
        >>> SpectralSettings().replace(seed=3, threads=None).seed
        3
    """

    #: Singular values computed per matrix.
    top_k: int = 32
    #: ``"auto"``, ``"randomized"`` or ``"exact"``.
    method: str = "auto"
    #: Relative convergence tolerance of every top-k value (randomized solver); a solve whose
    #: whole-spectrum statistics have settled stops once σ₁ is within 3·rtol (``sv_error``).
    rtol: float = 3e-3
    #: Cap on randomized iterations (passes over a matrix).
    max_iter: int = 24
    #: Seed of the random start blocks (results are reproducible per seed and thread count).
    seed: int = 0
    #: Worker threads; None: all cores.
    threads: Optional[int] = None
    #: Extra Krylov block columns beyond ``top_k``.
    oversample: int = 8

    def __post_init__(self) -> None:
        if not _is_int(self.top_k) or self.top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, not {self.top_k!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if (
            isinstance(self.rtol, bool)
            or not isinstance(self.rtol, (int, float))
            or not 0.0 < self.rtol < 1.0
        ):
            raise ConfigError(f"rtol must be in (0, 1), not {self.rtol!r}")
        if not _is_int(self.max_iter) or self.max_iter < 1:
            raise ConfigError(f"max_iter must be a positive integer, not {self.max_iter!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed must be an integer in [0, 2**64), not {self.seed!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, not {self.threads!r}")
        if not _is_int(self.oversample) or self.oversample < 0:
            raise ConfigError(f"oversample must be an integer >= 0, not {self.oversample!r}")

    def replace(self, **changes: Any) -> SpectralSettings:
        """A copy with ``changes`` (validated); a change of None keeps the field as it is, so
        unset keyword arguments of :func:`lora_rank.analyze` pass through.

        Example:
            >>> SpectralSettings(top_k=8).replace(top_k=None, rtol=1e-4).top_k
            8
        """
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def describe(self) -> dict[str, Any]:
        """What :attr:`lora_rank.Report.spectral_settings` records: every field (threads
        resolved to the core count when None) and a description of the solver.

        Example:
            >>> SpectralSettings(top_k=8).describe()["alpha"]
            'Hill, tail = top 8 eigenvalues'
        """
        return {
            **dataclasses.asdict(self),
            "threads": self.threads if self.threads is not None else os.cpu_count(),
            "solver": "randomized block Krylov on WᵀW; exact: f64 Gram + symmetric eigensolver",
            "alpha": f"Hill, tail = top {self.top_k} eigenvalues",
            "pl_alpha": "WeightWatcher WWFit (KS-optimal x_min) on the whole (estimated) spectrum",
            "shape": "randomized: block Gauss quadrature density of the Krylov passes",
        }
