"""``deepfake adapt``: a detector adapted to a new generator from a few of its images (``deepfake_lightning/adapt.py``).
Imports nothing heavy at the top, so that ``deepfake adapt --help`` answers at once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepfake_lightning.commands import DataOptionsHelp, data_keys, data_options_epilog

ADAPTED_FILE, REPORT_FILE = "adapted.ckpt", "adapt_report.json"


def _paths(value: str) -> list[str]:
    """A path, or a YAML list of paths as LightningCLI takes them ('[a/, b.png]')."""
    import yaml

    if value.strip().startswith("["):
        return [str(v) for v in yaml.safe_load(value)]
    return [value]


def add_fine_tuning_options(parser: argparse.ArgumentParser) -> None:
    """The ``--adapt.*`` options of a fine-tuning (``deepfake adapt`` and each step of ``deepfake timeline``)."""
    parser.add_argument("--adapt.steps", dest="steps", type=int, default=40, help="optimizer steps (default 40)")
    parser.add_argument("--adapt.batch_size", dest="batch_size", type=int, default=32, help="images per step (32)")
    parser.add_argument("--adapt.lr", dest="lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    parser.add_argument(
        "--adapt.replay_share", dest="replay_share", type=float, default=0.5, help="share of each batch replayed (0.5)"
    )
    parser.add_argument("--adapt.seed", dest="seed", type=int, default=0, help="seed of the split and training (0)")


def adapt_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepfake adapt",
        description="Adapt a detector to a new generator from a few of its images: brief fine-tuning with replay of "
        "the model's own training data (the data its checkpoint names, or --config / --data.*), part of the new "
        f"images kept aside to measure, recalibration on the validation split plus those. Writes OUT/{ADAPTED_FILE} "
        f"and OUT/{REPORT_FILE}, and prints AUROC before and after on every labelled split (forgetting) and on the "
        "held-out new images against the validation human images.",
        epilog=data_options_epilog(),
        formatter_class=DataOptionsHelp,
    )
    parser.add_argument("--ckpt_path", required=True, help="the detector: a .ckpt or a `deepfake export` folder")
    parser.add_argument("--out", required=True, help="folder for the adapted checkpoint and the report")
    parser.add_argument(
        "--adapt.ai_paths", dest="ai_paths", nargs="+", required=True, help="the new generator's images: files, folders"
    )
    parser.add_argument(
        "--adapt.human_paths", dest="human_paths", nargs="+", default=[], help="optional real images that match them"
    )
    add_fine_tuning_options(parser)
    parser.add_argument(
        "--adapt.holdout", dest="holdout", type=float, default=0.3, help="share of the new images kept aside (0.3)"
    )
    parser.add_argument(
        "--adapt.replay",
        dest="replay",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="replay the training split (default true; false: plain fine-tuning, which forgets)",
    )
    parser.add_argument("--config", default=None, help="a config whose data section overrides the checkpoint's")
    return parser


def _data_overrides(config: str | None, rest: list[str]) -> dict:
    """``--config``'s data section, then ``--data.KEY VALUE`` / ``--data.KEY=VALUE`` (YAML values)."""
    import yaml

    from deepfake_lightning.errors import ConfigError

    overrides = {}
    if config is not None:
        try:
            overrides |= (yaml.safe_load(Path(config).read_text()) or {}).get("data", {}) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"--config {config}: cannot be read ({e})") from None
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--data."):
            raise ConfigError(f"deepfake adapt: unknown option {arg!r} (see deepfake adapt --help)")
        key, eq, value = arg[len("--data.") :].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                raise ConfigError(f"{arg} needs a value")
            value, i = rest[i + 1], i + 1
        overrides[key] = yaml.safe_load(value)
        i += 1
    unknown = sorted(set(overrides) - set(data_keys()))
    if unknown:
        raise ConfigError(f"unknown data option(s) {', '.join('--data.' + k for k in unknown)}")
    return overrides


def _load(ckpt_path: str):
    """The model and its checkpoint dict (for an export folder, one built from its weights and settings)."""
    import lightning as L

    from deepfake_lightning.model_file import read_model_file

    model_file = read_model_file(ckpt_path)
    model = model_file.build()
    if model_file.checkpoint is not None:
        return model, model_file.checkpoint
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "datamodule_hyper_parameters": model_file.stored["data"],
        "provenance": dict(model_file.provenance),
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    return model, ckpt


def adapt_main(args: list[str]) -> dict:
    """``deepfake adapt --ckpt_path C --adapt.ai_paths NEW/ --out DIR [--adapt.*] [--config F] [--data.*]``."""
    a, rest = adapt_parser().parse_known_args(args)
    from deepfake_lightning.adapt import (
        AdaptSettings,
        adapt,
        datamodule_from,
        format_table,
        provenance_record,
        split_new_images,
    )
    from deepfake_lightning.checkpoints import stored_settings
    from deepfake_lightning.files import atomic_path

    settings = AdaptSettings(
        ai_paths=[p for v in a.ai_paths for p in _paths(v)],
        human_paths=[p for v in a.human_paths for p in _paths(v)],
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        holdout=a.holdout,
        replay=a.replay,
        replay_share=a.replay_share,
        seed=a.seed,
    )
    settings.check()
    overrides = _data_overrides(a.config, rest)
    new = split_new_images(settings)  # unreadable or too few images: refused before the model or data is read
    model, ckpt = _load(a.ckpt_path)
    stored = stored_settings(ckpt)["data"]
    if not stored.get("root") and "root" not in overrides:
        from deepfake_lightning.errors import ConfigError

        raise ConfigError(
            f"--ckpt_path {a.ckpt_path} does not say where its training data lies (an export folder keeps no data "
            "root): give --data.root (and --data.* as it was trained) or --config"
        )
    dm = datamodule_from(stored, overrides)
    state, report = adapt(model, dm, settings, new)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report |= {"source": str(a.ckpt_path), "checkpoint": str(out / ADAPTED_FILE)}

    import torch

    ckpt["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt["calibration"] = state.to_checkpoint()
    ckpt["datamodule_hyper_parameters"] = {**ckpt.get("datamodule_hyper_parameters", {}), **overrides}
    for key in ("optimizer_states", "lr_schedulers", "loops"):  # an adapted model is evaluated, not resumed
        ckpt.pop(key, None)
    provenance = ckpt.setdefault("provenance", {})
    provenance.setdefault("adaptations", []).append(provenance_record(report, str(a.ckpt_path)))
    provenance["validation"] = {"val/auroc": report["auroc"]["val"]["auroc_after"]}  # the old run's no longer hold
    provenance["test"] = {}
    with atomic_path(out / ADAPTED_FILE) as tmp:
        torch.save(ckpt, tmp)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(
        f"Adapted {a.ckpt_path} on {len(report['images']['ai_train'])} new AI image(s)"
        f" ({settings.steps} steps, {'with replay' if settings.replay else 'no replay'}, "
        f"{report['fine_tuning']['seconds']:.0f} s) -> {out / ADAPTED_FILE}; report: {out / REPORT_FILE}"
    )
    return report
