"""Label fractions: per-class balanced subsets (SimCLR's 1% and 10% ImageNet splits).

Two ways to pick the labelled images:
- ``fraction``: in every class, ``max(1, round(fraction * n_class))`` images drawn without
  replacement by ``default_rng(seed)`` (each class from its own stream, so adding a class does not
  change the others' picks);
- ``file``: a text file listing image file names one per line (the format of the official
  ``1percent.txt`` / ``10percent.txt``, e.g. ``n01440764_10026.JPEG``), matched against the
  sources' file names; names that are not in the source raise an error naming them.
"""

from __future__ import annotations

import os

import numpy as np

from .folder import DataError, list_source


def label_subset(source, fraction: float | None = None, file=None, seed: int = 0) -> list[tuple[str, int]]:
    """The labelled subset of ``source`` as ``(path, label)`` pairs, in listing order."""
    if (fraction is None) == (file is None):
        raise ValueError("give exactly one of fraction= or file=")
    listing = list_source(source, on_bad_file="skip")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        keep = []
        for label in np.unique(listing.labels):
            members = np.flatnonzero(listing.labels == label)
            k = max(1, round(fraction * len(members)))
            rng = np.random.default_rng([seed, int(label)])
            keep.append(rng.choice(members, size=k, replace=False))
        chosen = np.sort(np.concatenate(keep))
    else:
        chosen = _match_names(listing.paths, os.fspath(file))
    return [(listing.paths[i], int(listing.labels[i])) for i in chosen]


def _match_names(paths: list[str], file: str) -> np.ndarray:
    with open(file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not names:
        raise DataError(f"subset file {file!r} lists no image names")
    index: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, p in enumerate(paths):
        base = os.path.basename(p)
        if base in index:
            ambiguous.add(base)
        index[base] = i
    clash = sorted({os.path.basename(n) for n in names} & ambiguous)
    if clash:
        raise DataError(f"subset file {file!r} names {clash[:5]}, which appear more than once in the source")
    missing = [n for n in names if os.path.basename(n) not in index]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise DataError(f"subset file {file!r} names {len(missing)} image(s) not in the source: {shown}")
    return np.sort(np.unique([index[os.path.basename(n)] for n in names]))
