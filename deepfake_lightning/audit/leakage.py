"""Train/test leakage: images of a validation or test set that are in the training data, exactly (the same bytes,
SHA-256) or nearly (a perceptual hash, ``imagehash.phash``, within ``max_distance`` bits of a training image's:
re-encoded, resized or lightly edited copies). A test set that shares images with training measures memory, not
generalization; the audit flags a set when more than ``FLAG_SHARE`` of its images have a near-duplicate in training.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FLAG_SHARE = 0.01
MAX_DISTANCE = 4  # bits of 64: re-encodes and small resizes stay within it; unrelated photos are ~32 apart
_CHUNK = 512


def _fingerprint(path: str) -> tuple[str, int]:
    """(SHA-256 of the bytes, 64-bit perceptual hash) of one image; (sha, -1) when it cannot be decoded."""
    import imagehash

    from deepfake_lightning.data.dataset import load_image
    from deepfake_lightning.errors import BadImageError

    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    try:
        return sha, int(str(imagehash.phash(load_image(path))), 16)
    except BadImageError:
        return sha, -1


def fingerprints(files: list[str], workers: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """SHA-256s, perceptual hashes (uint64) and whether each image could be decoded (an unreadable one has no
    perceptual hash and is matched by its bytes only)."""
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(_fingerprint, files, chunksize=32))
    shas = [r[0] for r in results]
    hashes = np.array([r[1] if r[1] >= 0 else 0 for r in results], dtype=np.uint64)
    readable = np.array([r[1] >= 0 for r in results])
    return shas, np.where(readable, hashes, np.uint64(0)), readable


def nearest(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the smallest Hamming distance to a reference hash and that reference's index."""
    best = np.full(len(query), 65, dtype=np.int64)
    where = np.zeros(len(query), dtype=np.int64)
    for start in range(0, len(query), _CHUNK):
        q = query[start : start + _CHUNK, None]
        distance = np.bitwise_count(q ^ reference[None, :]).astype(np.int64)
        best[start : start + _CHUNK] = distance.min(axis=1)
        where[start : start + _CHUNK] = distance.argmin(axis=1)
    return best, where


def leakage_report(
    sets: dict[str, list[str]],
    train: list[str],
    max_distance: int = MAX_DISTANCE,
    examples: int = 5,
    root: str | os.PathLike = "",
) -> dict:
    """Per set: images, exact and near duplicates of training images (near includes exact), their share, ``flagged``
    (near share above :data:`FLAG_SHARE`) and a few examples (image, training image, distance). Images are named
    by their ids, opened under ``root``."""

    def fingerprints_of(ids: list[str]):
        return fingerprints([os.path.join(root, i) for i in ids])

    train_sha, train_hash, train_ok = fingerprints_of(train)
    train_hash, train_files = train_hash[train_ok], [f for f, ok in zip(train, train_ok, strict=True) if ok]
    train_shas = set(train_sha)
    out = {"max_distance": max_distance, "flag_share": FLAG_SHARE, "train_images": len(train), "sets": {}}
    for name, files in sets.items():
        shas, hashes, ok = fingerprints_of(files)
        exact = np.array([s in train_shas for s in shas], dtype=bool)
        distance, where = nearest(hashes, train_hash) if len(train_hash) else (np.full(len(files), 65), None)
        near = exact | (ok & (distance <= max_distance))
        share = float(near.mean()) if len(files) else 0.0
        order = np.argsort(distance, kind="stable")
        out["sets"][name] = {
            "images": len(files),
            "exact": int(exact.sum()),
            "near": int(near.sum()),
            "near_share": share,
            "flagged": share > FLAG_SHARE,
            "examples": [
                {"image": files[i], "train_image": train_files[where[i]], "distance": int(distance[i])}
                for i in order[:examples]
                if near[i] and where is not None
            ],
        }
    return out


def format_leakage(report: dict) -> list[str]:
    """Printed (and audit.md) lines: one per set, then its closest examples."""
    lines = [
        f"Leakage against the {report['train_images']} training images (exact: same bytes; near: perceptual hash "
        f"within {report['max_distance']} bits; flagged above {report['flag_share']:.0%} of a set):"
    ]
    for name, r in report["sets"].items():
        state = "FLAGGED" if r["flagged"] else "ok"
        lines.append(
            f"  {name}: {r['images']} images, {r['exact']} exact and {r['near']} near duplicates of training images "
            f"({r['near_share']:.1%}; {state})"
        )
        lines += [f"    {e['image']} ~ {e['train_image']} (distance {e['distance']})" for e in r["examples"][:3]]
    return lines
