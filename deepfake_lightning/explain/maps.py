"""Score maps: ``deepfake explain FILES --map true``, each image scored as tiles at native resolution."""

from __future__ import annotations

from pathlib import Path

from deepfake_lightning.evidence import COLUMNS as EVIDENCE_COLUMNS
from deepfake_lightning.explain.cam import earlier_explanations, short_name, unique_name, write_explanations

MAP_COLUMNS = [
    "file", "prob_ai", "label", "verdict_views", "map_prob_ai", "map_is_verdict", "error", "png", "tiles_csv",
    "n_tiles", "tiles_total", *EVIDENCE_COLUMNS,
]  # fmt: skip


def views_name(views: int | str) -> str:
    """How a verdict's views read in a caption: ``tiles``, ``1 view``, ``5 views``."""
    return "tiles" if views == "tiles" else f"{views} view{'' if views == 1 else 's'}"


def map_files(
    detector,
    files: list[Path],
    out_dir: str | Path,
    stride: int | None = None,
    max_tiles: int | None = None,
    trust_anchors: str | None = None,
):
    """Writes, per readable image, ``<stem>_map.png`` (:func:`~deepfake_lightning.localization.plot_score_map`) and
    ``<stem>_tiles.csv`` (``x,y,size,prob_ai``, calibrated tile probabilities, pixel coordinates in the original
    image), and ``explanations.csv`` with the model's own verdict (``prob_ai`` and ``label`` computed on its own
    views, ``verdict_views``: exactly what ``deepfake predict`` gives the file), the map's pooled tiles
    (``map_prob_ai``; ``map_is_verdict`` when the map's tiles are the verdict's views), tile counts and what the
    file's metadata says (``evidence_*``, also under the map's title); unreadable files get a row with their error, as
    in ``explain_files``. Returns this run's rows."""
    import matplotlib.pyplot as plt
    import torch

    from deepfake_lightning.data.dataset import BadImageError, load_image
    from deepfake_lightning.data.tiles import collate_tiles
    from deepfake_lightning.evidence import caption, read_evidence
    from deepfake_lightning.files import atomic_path
    from deepfake_lightning.localization import plot_score_map, score_tiles

    out_dir = Path(out_dir)
    tiler = detector.tile_transform(stride, max_tiles)  # ConfigError for a resize-mode model, before any work
    model, threshold = detector.model, detector.threshold
    pooling = model.hparams.get("tile_pooling", "max")
    # The map is the verdict's own scoring only for a tiled model whose tiling the command line left alone.
    same_tiles = (stride in (None, detector.data.get("tile_stride"))) and (
        max_tiles in (None, detector.data.get("max_tiles", 64))
    )
    map_is_verdict = detector.views == "tiles" and same_tiles
    earlier, used = earlier_explanations(out_dir, files, MAP_COLUMNS)
    rows = []
    for f in files:
        try:
            image = load_image(f)
        except BadImageError as e:
            rows.append({"file": str(f), "error": str(e.__cause__ or e), "png": "", "tiles_csv": ""})
            continue
        scores = score_tiles(model, collate_tiles([tiler(image)]))[0]
        probs = model.calibrator(scores.logits)
        map_prob = float(model.calibrator(torch.tensor([scores.logit]).numpy())[0])
        prob = map_prob if map_is_verdict else float(detector.score_images([image])[0])
        label = int(prob >= threshold)
        name = unique_name(f"{f.stem}_map", used)
        verdict = "AI-generated" if label else "human"
        evidence = read_evidence(f, trust_anchors)
        title = (
            f"{short_name(f.name, 40)}: {verdict}, P(AI) {prob:.3f} on the model's {views_name(detector.views)} "
            f"(threshold {threshold:.3f})\n"
        )
        if not map_is_verdict:  # the map scores other views than the verdict: say so, with the map's own figure
            title += f"map: {scores.n_tiles} tiles, {pooling} pooling, P(AI) {map_prob:.3f} (not the verdict's views)\n"
        title += caption(evidence, 90)
        fig = plot_score_map(image, scores, probs, threshold, title, pooling=pooling)
        with atomic_path(out_dir / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        tiles_csv = f"{name.removesuffix('_map')}_tiles.csv"
        with atomic_path(out_dir / tiles_csv) as tmp:
            scores.table(probs).to_csv(tmp, index=False)
        rows.append(
            {
                "file": str(f),
                "prob_ai": prob,
                "label": label,
                "verdict_views": str(detector.views),
                "map_prob_ai": map_prob,
                "map_is_verdict": map_is_verdict,
                "error": "",
                "png": f"{name}.png",
                "tiles_csv": tiles_csv,
                "n_tiles": scores.n_tiles,
                "tiles_total": scores.tiles_total,
            }
            | evidence.columns()
        )
    return write_explanations(out_dir, earlier, rows, MAP_COLUMNS)
