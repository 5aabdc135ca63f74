"""Score maps: ``deepfake explain FILES --map true``, each image scored as tiles at native resolution."""

from __future__ import annotations

from pathlib import Path

from deepfake_lightning.evidence import COLUMNS as EVIDENCE_COLUMNS
from deepfake_lightning.explain.figures import verdict_title
from deepfake_lightning.explain.files import earlier_explanations, unique_name, write_explanations

MAP_COLUMNS = [
    "file", "prob_ai", "label", "verdict_views", "map_prob_ai", "map_is_verdict", "error", "png", "tiles_csv",
    "n_tiles", "tiles_total", *EVIDENCE_COLUMNS,
]  # fmt: skip


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

    from deepfake_lightning.data.dataset import BadImageError
    from deepfake_lightning.evidence import caption, read_evidence
    from deepfake_lightning.files import atomic_path
    from deepfake_lightning.localization import TileScores, plot_score_map

    out_dir = Path(out_dir)
    tiler = detector.tile_transform(stride, max_tiles, normalize=False)  # ConfigError for a resize-mode model
    threshold, settings = detector.threshold, detector.settings
    # The map is the verdict's own scoring only for a tiled model whose tiling the command line left alone.
    same_tiles = stride in (None, settings.tile_stride) and max_tiles in (None, settings.max_tiles)
    map_is_verdict = settings.tiled and same_tiles
    verdict_input = detector.evaluation_transform()
    earlier, used = earlier_explanations(out_dir, files, MAP_COLUMNS)
    rows = []
    for f in files:
        try:
            image = detector.read(f)
        except BadImageError as e:
            rows.append({"file": str(f), "error": str(e.__cause__ or e), "png": "", "tiles_csv": ""})
            continue
        tiles = tiler(image)
        inputs = [tiles] if map_is_verdict else [tiles, verdict_input(image)]
        parts = detector.view_logits_of(inputs)  # the map's tiles and the verdict's views in one pass
        scores = TileScores.of(tiles, parts[0], detector.pool(parts[0]))
        probs = detector.probs(scores.logits)
        map_prob = float(detector.probs([scores.logit])[0])
        prob = map_prob if map_is_verdict else float(detector.probs([detector.combine(inputs[1], parts[1])])[0])
        label = int(detector.labels(prob))
        name = unique_name(f"{f.stem}_map", used)
        evidence = read_evidence(f, trust_anchors)
        title = verdict_title(f.name, prob, threshold, settings) + "\n"
        if not map_is_verdict:  # the map scores other views than the verdict: say so, with the map's own figure
            title += (
                f"map: {scores.n_tiles} tiles, {settings.tile_pooling} pooling, P(AI) {map_prob:.3f} "
                "(not the verdict's views)\n"
            )
        title += caption(evidence, 90)
        fig = plot_score_map(image, scores, probs, threshold, title, pooling=settings.tile_pooling)
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
                "verdict_views": str(settings.eval_views),
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
