"""Shortcut audits: does the data, or the model, separate the classes by the file instead of the image?

Issue trackers of published detectors report models that learned JPEG against PNG, or one image size against
another, rather than real against generated; a Kaggle-style dataset can carry such a shortcut (format, size, aspect
ratio, JPEG quality, metadata presence differing between the classes) and its test scores then mean little.

* **Dataset audit** (``deepfake audit --config C --out DIR``, ``commands/audit.py``): per split and class, the
  distribution of format, width, height, aspect ratio, file size, JPEG quality (estimated from the quantization
  tables), chroma subsampling and metadata presence, read from file headers only; then a classifier that sees
  **only** the container's features (scikit-learn's gradient boosting, 5-fold stratified cross-validation) and its
  AUROC, ``metadata_auroc``; ``flagged`` when it exceeds ``FLAG_AUROC`` (0.75): the classes can be told apart
  without looking at a pixel. The file size is left out of that classifier, since it follows the pixels (see
  ``CONTENT_DEPENDENT``), and reported beside it as ``metadata_auroc_with_size``.
  ``top_features`` ranks each feature by its own AUROC (how well it alone separates the classes, either way up).
* **Model audit** (``deepfake test --report.reencode true``): each labelled split scored again after re-encoding
  both classes the same way (:func:`reencode`); each metric before and after. A model that reads the image barely
  moves; one that reads the file drops toward chance.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, JpegImagePlugin

FLAG_AUROC = 0.75  # a metadata-only classifier above this: the split carries a shortcut
REENCODE_QUALITY = 90
REENCODE_MAX_SIDE = 1024
REENCODE_METRICS = ("auroc", "ap", "ece")  # and at the tuned threshold: acc, f1_macro, acc_human, acc_ai
_IJG_LUMINANCE = np.array(  # the JPEG standard's luminance table (Annex K), which libjpeg scales by quality
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29,
     51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121,
     120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
)  # fmt: skip
_SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


# --------------------------------------------------------------------------------------------- model audit
def reencode(image: Image.Image) -> Image.Image:
    """The same file for every image, whatever its class: RGB, at most ``REENCODE_MAX_SIDE`` pixels a side
    (Lanczos), JPEG at quality ``REENCODE_QUALITY`` with 4:2:0 chroma, decoded again."""
    image = image.convert("RGB")
    scale = REENCODE_MAX_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=REENCODE_QUALITY, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def reencode_report(before: dict, after: dict) -> dict:
    """Each metric of two ``split_report`` results, before and after re-encoding, and the change."""
    rows = {}
    pairs = [(m, before.get(m), after.get(m)) for m in REENCODE_METRICS]
    pairs += [
        (f"{m}@tuned", before["at_tuned"][m], after["at_tuned"][m]) for m in ("acc", "f1_macro", "acc_human", "acc_ai")
    ]
    for name, b, a in pairs:
        if b is None or a is None:
            continue
        rows[name] = {"before": float(b), "after": float(a), "change": float(a) - float(b)}
    return rows


def format_reencode(results: dict) -> str:
    """The printed table of the model audit: a row per split, each metric as before -> after."""
    rows = []
    for split, metrics in results.items():
        row = {"split": split}
        for name, r in metrics.items():
            row[name.replace("@tuned", "@tuned").replace("f1_macro", "macroF1")] = (
                f"{r['before']:.4f} -> {r['after']:.4f}"
            )
        rows.append(row)
    lines = [
        f"\nRe-encoded (both classes: RGB, at most {REENCODE_MAX_SIDE} px, JPEG {REENCODE_QUALITY}), before -> after:",
        pd.DataFrame(rows).to_string(index=False),
    ]
    for split, metrics in results.items():
        drop = -metrics.get("auroc", {}).get("change", 0.0)
        if drop > 0.05:
            lines.append(
                f"deepfake: warning: {split}: AUROC drops by {drop:.3f} when every image is re-encoded the same way: "
                "the model relies on the file (format, size, compression), not only on the image"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- dataset audit
def file_features(path: str | Path) -> dict:
    """Metadata-only features of one image file, from its header (no pixels decoded)."""
    path = Path(path)
    with Image.open(path) as im:
        width, height = im.size
        info = im.info
        features = {
            "format": im.format or "unknown",
            "width": width,
            "height": height,
            "aspect": width / height if height else float("nan"),
            "file_kb": path.stat().st_size / 1024,
            "bits_per_pixel": 8 * path.stat().st_size / max(1, width * height),
            "mode": im.mode,
            "jpeg_quality": jpeg_quality(im) if im.format == "JPEG" else -1,
            "subsampling": _SUBSAMPLING.get(JpegImagePlugin.get_sampling(im), "none")
            if im.format == "JPEG"
            else "none",
            "has_exif": bool(info.get("exif")) or len(im.getexif()) > 0,
            "has_icc": bool(info.get("icc_profile")),
            "has_xmp": bool(info.get("xmp") or info.get("XML:com.adobe.xmp")),
            "has_text": any(isinstance(v, str) for k, v in info.items() if k not in ("XML:com.adobe.xmp",))
            and im.format == "PNG",
        }
    return features


def jpeg_quality(im: Image.Image) -> int:
    """libjpeg's quality setting that best explains a JPEG's luminance quantization table (by the table's sum,
    which is independent of the order PIL lists it in); -1 without tables."""
    tables = getattr(im, "quantization", None) or {}
    if 0 not in tables:
        return -1
    total = float(np.sum(tables[0]))
    best, best_error = -1, math.inf
    for quality in range(1, 101):
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        scaled = np.clip((_IJG_LUMINANCE * scale + 50) // 100, 1, 255)
        error = abs(float(scaled.sum()) - total)
        if error < best_error:
            best, best_error = quality, error
    return best


CATEGORICAL = ("format", "mode", "subsampling")
NUMERIC = ("width", "height", "aspect", "file_kb", "bits_per_pixel", "jpeg_quality")
# The compressed size follows the pixels (smooth images compress better; generated ones often are): it separates the
# classes of the unbiased demo (AUROC 0.72-0.76) with no file shortcut at all. It is reported (distributions,
# top_features, metadata_auroc_with_size) but the flag rests on the container alone.
CONTENT_DEPENDENT = ("file_kb", "bits_per_pixel")
FLAGS = ("has_exif", "has_icc", "has_xmp", "has_text")


def feature_table(root: Path, paths: list[str], bad_images: str = "fail") -> tuple[pd.DataFrame, list[str]]:
    """Features of every file (rows in order); unreadable files raise a one-line error naming them (``fail``) or
    are left out and returned (``skip``)."""
    from deepfake_lightning.data.index import DataError

    rows, bad = [], []
    for p in paths:
        try:
            rows.append({"path": p, **file_features(root / p)})
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if bad_images == "fail":
                raise DataError(f"cannot read image {str(root / p)!r}: {e} (data.bad_images=fail)") from e
            bad.append(p)
    return pd.DataFrame(rows), bad


def distributions(features: pd.DataFrame, labels: np.ndarray) -> dict:
    """Per class (human, ai): counts of each categorical value, quantiles of each number, share of each flag."""
    out = {}
    for name, cls in (("human", 0), ("ai", 1)):
        part = features[labels == cls]
        entry = {"images": len(part)}
        for c in CATEGORICAL:
            entry[c] = {str(k): int(v) for k, v in part[c].value_counts().items()}
        for c in NUMERIC:
            values = part[c][part[c] >= 0] if c == "jpeg_quality" else part[c]
            q = values.quantile([0.0, 0.5, 1.0]).tolist() if len(values) else [float("nan")] * 3
            entry[c] = {"min": _round(q[0]), "median": _round(q[1]), "max": _round(q[2])}
        for c in FLAGS:
            entry[c] = _round(float(part[c].mean())) if len(part) else float("nan")
        out[name] = entry
    return out


def _round(v: float) -> float:
    return round(float(v), 4)


def metadata_classifier(features: pd.DataFrame, labels: np.ndarray, seed: int = 0) -> dict:
    """Cross-validated AUROC of a classifier on the container's metadata alone (``metadata_auroc``: format, size,
    aspect, JPEG quality, subsampling, metadata presence), the same with the file size too
    (``metadata_auroc_with_size``), and each feature's own AUROC (``top_features``)."""
    from sklearn.metrics import roc_auc_score

    x = pd.get_dummies(features[list(CATEGORICAL + NUMERIC + FLAGS)], columns=list(CATEGORICAL), dtype=float)
    x = x.astype(float).fillna(-1)
    folds = min(5, int(np.bincount(labels, minlength=2).min()))
    if folds < 2:
        return {"metadata_auroc": None, "top_features": [], "flagged": False, "why": "fewer than 2 images of a class"}
    container = x.drop(columns=list(CONTENT_DEPENDENT))
    single = []
    for column in x.columns:
        values = x[column].to_numpy()
        if np.unique(values).size < 2:
            continue
        a = float(roc_auc_score(labels, values))
        higher = "ai" if a >= 0.5 else "human"
        single.append({"feature": column, "auroc": round(max(a, 1 - a), 4), "higher_in": higher})
    single.sort(key=lambda r: -r["auroc"])
    auroc = _cross_validated_auroc(container, labels, folds, seed)
    return {
        "metadata_auroc": round(auroc, 4),
        "metadata_auroc_with_size": round(_cross_validated_auroc(x, labels, folds, seed), 4),
        "folds": folds,
        "top_features": single[:5],
        "flagged": auroc > FLAG_AUROC,
    }


def _cross_validated_auroc(x: pd.DataFrame, labels: np.ndarray, folds: int, seed: int) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    leaf = max(2, min(20, len(labels) // 20))  # scikit-learn's 20 would forbid every split in a small split
    model = HistGradientBoostingClassifier(max_iter=100, min_samples_leaf=leaf, random_state=seed)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # A few columns of file features: one thread is enough, and OpenMP's spinning threads slowed the audit 16x when
    # another process shared the cores (78 s against 4.8 s on 2 cores beside a 2-thread torch job).
    with threadpool_limits(limits=1, user_api="openmp"):
        probs = cross_val_predict(model, x, labels, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, probs))


def audit_split(root: Path, index: pd.DataFrame, bad_images: str = "fail") -> dict:
    """The audit of one labelled split (an index with ``path`` and ``label``)."""
    features, bad = feature_table(root, index["path"].tolist(), bad_images)
    labels = index.set_index("path").loc[features["path"], "label"].to_numpy().astype(int) if len(features) else []
    result = {"images": len(features), "skipped": bad, "classes": distributions(features, np.asarray(labels))}
    return result | metadata_classifier(features, np.asarray(labels))


def format_markdown(audit: dict) -> str:
    """audit.md: one section per split, the verdict first."""
    lines = ["# Dataset audit: can the classes be told apart by the file alone?", ""]
    lines.append(
        f"A classifier sees only the container's metadata (format, width, height, aspect, JPEG quality, chroma "
        f"subsampling, metadata presence), never a pixel; `flagged` when its cross-validated AUROC exceeds "
        f"{FLAG_AUROC}."
    )
    for split, r in audit["splits"].items():
        lines += ["", f"## {split}: {r['images']} images", ""]
        if r.get("metadata_auroc") is None:
            lines.append(f"No classifier: {r.get('why', 'too few images')}.")
            continue
        verdict = "**FLAGGED: a shortcut**" if r["flagged"] else "no shortcut found"
        lines.append(
            f"metadata_auroc **{r['metadata_auroc']:.3f}** ({r['folds']}-fold): {verdict}. With the file size too "
            f"(which follows the pixels: smooth images compress better): {r['metadata_auroc_with_size']:.3f}."
        )
        if r["top_features"]:
            lines += ["", "| feature | AUROC alone | higher in |", "|---|---|---|"]
            for f in r["top_features"]:
                note = " (follows the pixels: not in the flag)" if f["feature"] in CONTENT_DEPENDENT else ""
                lines.append(f"| {f['feature']}{note} | {f['auroc']:.3f} | {f['higher_in']} |")
        lines += ["", "| | human | ai |", "|---|---|---|"]
        human, ai = r["classes"]["human"], r["classes"]["ai"]
        for key in ("images", *CATEGORICAL, *NUMERIC, *FLAGS):
            lines.append(f"| {key} | {_cell(human[key])} | {_cell(ai[key])} |")
        if r["skipped"]:
            lines.append(f"\nSkipped {len(r['skipped'])} unreadable image(s): {r['skipped'][:10]}")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, dict):
        if value and all(isinstance(v, float) and math.isnan(v) for v in value.values()):
            return "n/a"  # e.g. the JPEG quality of a class with no JPEG
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:g}" if isinstance(value, float) else str(value)
