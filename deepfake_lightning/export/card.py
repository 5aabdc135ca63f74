"""The Hugging Face model card (``README.md``) that ``deepfake export`` writes beside the weights it describes: YAML
metadata, then what the model is, how it was trained and evaluated, how to use it, and its limits, from the
:class:`~deepfake_lightning.provenance.ModelFacts` of the checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from deepfake_lightning.provenance import DEMO_WARNING, KAGGLE_DATASET, UNKNOWN, ModelFacts
from deepfake_lightning.settings import DEFAULTS


def model_card(facts: ModelFacts) -> str:
    """A Hugging Face model card (README.md): YAML metadata, then what the model is, how it was trained and
    evaluated, how to use it, and its limits."""
    import yaml

    results = []
    if isinstance(facts.validation, dict) and facts.validation:
        v = facts.validation
        results.append(
            _result(
                "validation",
                v.get("val/auroc"),
                v.get("val/f1"),
                v.get("val/acc"),
                "deepfake adapt: AUROC after the latest adaptation"
                if facts.adaptations
                else "training run: F1 and accuracy at 0.5",
            )
        )
    tta = facts.test_settings or {}
    how = ", ".join(
        (
            [f"tiles ({tta.get('tile_pooling', DEFAULTS.tile_pooling)} pooling)"]
            if tta.get("eval_views") == "tiles"
            else []
        )
        + ([f"{tta['eval_views']} views"] if tta.get("eval_views", DEFAULTS.eval_views) not in (1, "tiles") else [])
        + (["mirrored (tta_flip)"] if tta.get("tta_flip") else [])
    )
    for split, r in facts.test.items():
        results.append(
            _result(
                split,
                r.get("auroc"),
                r.get("f1_macro"),
                r.get("acc"),
                "deepfake test: macro F1 and accuracy at the tuned threshold"
                + (f"; test-time augmentation: {how}" if how else "")
                + (f"; {_report_name(facts.test_report)}" if facts.test_report else ""),
            )
        )
    metadata = {
        "library_name": "deepfake-lightning",
        "pipeline_tag": "image-classification",
        "tags": ["ai-generated-image-detection", "deepfake-detection", "timm", "pytorch-lightning", facts.backbone]
        + (["demo", "not-a-real-detector"] if facts.trained_on_demo else []),
        "metrics": ["roc_auc", "f1", "accuracy"],
    }
    data = facts.training_data
    if isinstance(data, dict) and data.get("kind") == "csv" and data.get("kaggle"):
        metadata["datasets"] = [KAGGLE_DATASET]
    if results:
        metadata["model-index"] = [
            {
                "name": f"deepfake-lightning-{facts.backbone}",
                "results": [{k: r[k] for k in ("task", "dataset", "metrics")} for r in results if r["metrics"]],
            }
        ]
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).rstrip(),
        "---",
        "",
        f"# AI-generated image detector: {facts.backbone}",
        "",
    ]
    if facts.trained_on_demo:
        lines += [f"> **Not a detector.** {DEMO_WARNING[0].upper()}{DEMO_WARNING[1:]}.", ""]
    lines += [
        "Binary classifier: the probability that an image is AI-generated (label 1) rather than a photograph "
        "(label 0), trained with deepfake-lightning on a timm backbone.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| backbone | `{facts.backbone}` (one logit) |",
        f"| front-end | {facts.frontend} |",
        f"| input | {facts.img_size} px, `{facts.mode}` mode |",
        f"| calibration | {facts.calibration}"
        + (f", temperature {facts.temperature:.4f}" if facts.temperature else "")
        + " |",
        f"| decision threshold | {facts.threshold:.4f} ({facts.threshold_criterion}, chosen on validation) |",
        *(
            [
                f"| false-positive guarantee | at most {g['certified_fpr']:.2%} of human images called AI, at "
                f"{g['confidence']:.0%} confidence (one-sided Clopper-Pearson bound on {g['n_human']} human "
                f"validation images, {g['false_positives']} at or above the threshold) |"
            ]
            if (g := facts.fpr_guarantee)
            else []
        ),
        f"| versions | {_versions(facts.versions)} |",
        f"| git commit | {facts.git_commit or UNKNOWN} |",
        "",
        "## Training data",
        "",
        f"{facts.dataset}; train/val split sha256 `{facts.split_sha256}`.",
        "",
        *_adaptations(facts.adaptations),
        "## Evaluation",
        "",
    ]
    if results:
        lines += ["| split | AUROC | F1 | accuracy | measured by |", "|---|---|---|---|---|"]
        for r in results:
            values = {m["type"]: m["value"] for m in r["metrics"]}
            lines.append(
                f"| {r['dataset']['name']} | "
                + " | ".join(f"{values[k]:.4f}" if k in values else "" for k in ("roc_auc", "f1", "accuracy"))
                + f" | {r['source']} |"
            )
        lines.append("")
    else:
        lines += [f"{UNKNOWN}: this checkpoint carries no metrics.", ""]
    lines += [
        "## Intended use",
        "",
        "Screening images for likely AI generation, with a human in the loop; the probability is calibrated on "
        "validation data from the training distribution.",
        "",
        "## Limitations",
        "",
        "- Detectors of AI-generated images generalize poorly to generators and post-processing they were not "
        "trained on; calibration and the threshold do not transfer across such a change.",
        "- Re-compression, resizing and blur reduce accuracy (see `deepfake test --report.robustness true`).",
    ]
    if facts.trained_on_demo:
        lines.append(f"- {DEMO_WARNING[0].upper()}{DEMO_WARNING[1:]}.")
    lines += [
        "",
        "## How to use",
        "",
        "With deepfake-lightning installed (`pip install -e .` in its checkout):",
        "",
        "```bash",
        "deepfake predict --config configs/demo.yaml --ckpt_path THIS_FOLDER --data.predict_paths '[photos/]'",
        "deepfake explain photo.jpg --ckpt_path THIS_FOLDER --out cams/",
        "```",
        "",
        "```python",
        "from deepfake_lightning import load_detector",
        "detector = load_detector('THIS_FOLDER')   # safetensors + JSON: nothing is unpickled",
        "print(detector.facts)",
        "```",
        "",
    ]
    return "\n".join(lines)


NEW_ROW = {"new_generator": "held-out new images vs val human"}  # adapt.NEW's row, as adapt prints it


def _adaptations(adaptations: list) -> list[str]:
    """The card's lines on ``deepfake adapt`` runs: which images, how many, how long, and what they changed."""
    if not adaptations:
        return []
    lines = ["## Adaptations", "", "Adapted after training with `deepfake adapt` (fine-tuning, oldest first):", ""]
    for i, a in enumerate(adaptations, 1):
        auroc = a.get("auroc", {})
        changes = ", ".join(
            f"{NEW_ROW.get(name, name)} {r['before']:.4f} -> {r['after']:.4f}"
            for name, r in auroc.items()
            if r.get("before") is not None
        )
        trained_on = a.get("ai_train", [])
        files = ", ".join(Path(f).name for f in trained_on[:5]) + (" ..." if len(trained_on) > 5 else "")
        lines.append(
            f"{i}. {a.get('ai_images')} AI and {a.get('human_images')} human image(s) of a new generator "
            f"({len(trained_on)} adapted on: {files}; {len(a.get('ai_held_out', []))} kept aside), "
            f"{a.get('steps')} steps at lr {a.get('lr')}, {'with' if a.get('replay') else 'without'} replay of the "
            f"training data; AUROC {changes}."
        )
    return [*lines, ""]


def _result(name: str, auroc, f1, acc, source: str) -> dict:
    metrics = [
        {"type": t, "value": round(float(v), 4)}
        for t, v in (("roc_auc", auroc), ("f1", f1), ("accuracy", acc))
        if v is not None
    ]
    return {
        "task": {"type": "image-classification"},
        "dataset": {"name": name, "type": name},
        "metrics": metrics,
        "source": source,
    }


def _report_name(report: str) -> str:
    """``eval/test_best/report.json``: the report a figure comes from, by its place in the run."""
    parts = Path(report).parts
    return "/".join(parts[-3:]) if len(parts) >= 3 else report


def _versions(v) -> str:
    return ", ".join(f"{k} {x}" for k, x in v.items()) if isinstance(v, dict) else UNKNOWN


def read_card_metadata(path: str | os.PathLike) -> dict:
    """The YAML metadata block of a model card."""
    import yaml

    text = Path(path).read_text()
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text.split("---\n", 2)[1]) or {}
