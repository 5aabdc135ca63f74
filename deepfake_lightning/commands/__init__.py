"""Command modules that sit above the features they combine (imported by ``cli.py`` only when their command runs).

Nothing here imports torch at the top, so that ``deepfake COMMAND --help`` answers at once.
"""

# Every ``--data.*`` key the commands that read data through LightningCLI (audit, calibrate, data) accept: the
# DeepfakeDataModule's signature, listed here so that their --help can show it without importing torch
# (tests/test_architecture.py checks the two agree).
DATA_KEYS = (
    "root", "demo", "demo_seed", "demo_shortcut", "train_csv", "train_query", "test_v1_csv", "test_v2_csv",
    "test_edited_csv", "layout", "label_dirs", "path_column", "label_column", "generator_column", "split_column",
    "test_sets", "train_sets", "balance", "manifest", "group_column", "val_fraction", "split_seed", "split_file",
    "predict_split", "predict_paths", "img_size", "mode", "aug_strength", "aug_reshare", "eval_views", "tile_stride",
    "max_tiles", "mean", "std", "batch_size", "num_workers", "pin_memory", "persistent_workers", "bad_images",
    "check_images", "jpeg_draft", "cache_dir", "augment_on", "decode",
)  # fmt: skip


def data_options_epilog() -> str:
    """The ``--help`` epilog of a command that reads data: every ``--data.*`` key, and where they are described."""
    keys = " ".join(f"--data.{k}" for k in DATA_KEYS)
    return (
        f"Data options (as in `deepfake fit`; `deepfake fit --help` describes each): --config FILE, {keys}. "
        "A Kaggle-layout folder without a test.csv needs --data.test_v2_csv null."
    )
