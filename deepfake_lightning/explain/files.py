"""``deepfake explain FILES``: one Grad-CAM figure per image (explain/figures.py) and ``explanations.csv``."""

from __future__ import annotations

from pathlib import Path

from deepfake_lightning.explain.cam import CamExplainer, denormalize
from deepfake_lightning.explain.figures import explanation_figure, verdict_title


def explain_files(
    detector,
    files: list[Path],
    out_dir: str | Path,
    batch_size: int = 16,
    trust_anchors: str | None = None,
    **explainer_args,
):
    """Writes one PNG per readable image (explain/figures.py: the whole image with the network's view outlined, the
    view's CAM overlay, each layer's map in multi-layer mode, a colour bar; titled with the model's own verdict, its
    caption says what the file's metadata says, ``evidence.py``) and ``explanations.csv`` (``file, prob_ai, label,
    verdict_views, error, png, evidence_c2pa, ..., evidence_summary``) to ``out_dir``. ``prob_ai`` and ``label`` are
    the verdict on the model's own views (one, five or tiles), exactly what ``deepfake predict`` gives the file; the
    CAM explains its single view. Unreadable files are listed in the CSV with their error and skipped; they never
    stop the run. An ``out_dir`` explained into before keeps its rows and PNGs: this run's rows are added (a file
    explained again replaces its row and PNG). Returns this run's rows as a DataFrame."""
    import matplotlib.pyplot as plt
    import torch

    from deepfake_lightning.data.dataset import BadImageError
    from deepfake_lightning.evidence import COLUMNS as EVIDENCE_COLUMNS
    from deepfake_lightning.evidence import caption, read_evidence

    out_dir = Path(out_dir)
    columns = ["file", "prob_ai", "label", "verdict_views", "error", "png", *EVIDENCE_COLUMNS]
    earlier, used_names = earlier_explanations(out_dir, files, columns)
    settings, verdict_input = detector.settings, detector.evaluation_transform()
    rows = []
    with CamExplainer(detector.model, **explainer_args) as explainer:
        for start in range(0, len(files), batch_size):
            batch_files, pictures = [], []
            for f in files[start : start + batch_size]:
                try:
                    pictures.append(detector.read(f))
                    batch_files.append(f)
                except BadImageError as e:
                    error = str(e.__cause__ or e)
                    rows.append({"file": str(f), "prob_ai": None, "label": None, "error": error, "png": ""})
            if not pictures:
                continue
            probs = detector.probs(detector.logits([verdict_input(p) for p in pictures]))
            views = torch.stack([detector.transform(p) for p in pictures])
            result = explainer(views)
            rgb = denormalize(views, settings.mean, settings.std)
            layers = list(result.per_layer)
            main = layers[0] if len(layers) == 1 else f"{len(layers)} layers combined"
            for i, (f, picture) in enumerate(zip(batch_files, pictures, strict=True)):
                prob = float(probs[i])
                maps = [(main, result.cam[i])]
                maps += [(k, v[i]) for k, v in result.per_layer.items()] if len(layers) > 1 else []
                title = verdict_title(f.name, prob, detector.threshold, settings)
                fig = explanation_figure(picture, rgb[i], maps, settings, title, result.method)
                evidence = read_evidence(f, trust_anchors)
                # a figure-level label: constrained layout gives it the room its lines need, below the panels
                width = int(fig.get_figwidth() * 72 / (0.65 * 7))  # characters of 7 pt text across the figure
                fig.supxlabel(caption(evidence, width), fontsize=7)
                name = unique_name(f.stem, used_names)
                fig.savefig(out_dir / f"{name}.png", dpi=100)
                plt.close(fig)
                label = int(detector.labels(prob))
                row = {"file": str(f), "prob_ai": prob, "label": label, "verdict_views": str(settings.eval_views)}
                rows.append(row | {"error": "", "png": f"{name}.png"} | evidence.columns())
    return write_explanations(out_dir, earlier, rows, columns)


def earlier_explanations(out_dir: Path, files: list[Path], columns: list[str]):
    """The rows of an ``explanations.csv`` already in ``out_dir``, less those of ``files`` (explained again now), and
    the PNG names they use (so that new names do not overwrite theirs)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "explanations.csv"
    again = {str(Path(f).resolve()) for f in files}
    earlier = pd.read_csv(csv, keep_default_na=False, dtype=str) if csv.is_file() else pd.DataFrame(columns=columns)
    earlier = earlier[[str(Path(f).resolve()) not in again for f in earlier["file"]]].reindex(columns=columns)
    return earlier, {Path(p).stem for p in earlier["png"].fillna("") if p}


def unique_name(stem: str, used: set[str]) -> str:
    """``stem``, or with underscores appended while it is taken (the same stem in two folders)."""
    while stem in used:
        stem += "_"
    used.add(stem)
    return stem


def write_explanations(out_dir: Path, earlier, rows: list[dict], columns: list[str]):
    """Writes ``explanations.csv`` (earlier rows, then this run's) atomically; returns this run's rows."""
    import pandas as pd

    from deepfake_lightning.files import atomic_path

    table = pd.DataFrame(rows, columns=columns).astype({"label": "Int64"})
    with atomic_path(out_dir / "explanations.csv") as tmp:
        pd.concat([t for t in (earlier, table) if len(t)] or [table]).to_csv(tmp, index=False)
    return table
