"""Manifests (deepfake data scan, data.manifest) and the train/test leakage audit (audit/leakage.py)."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepfake_lightning.audit.leakage import leakage_report, nearest
from deepfake_lightning.cli import main
from deepfake_lightning.data import DeepfakeDataModule
from deepfake_lightning.errors import DataError
from deepfake_lightning.provenance import ModelFacts


def _photo(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A smooth random picture (a perceptual hash needs low-frequency structure to be stable)."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def _folders(root, rng, n=6):
    for split in ("train", "test"):
        for cls in ("real", "fake"):
            for i in range(n):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                _photo(rng).save(root / split / cls / f"{i}.jpg", quality=90)
    return root


def test_scan_writes_a_manifest_and_a_changed_dataset_is_refused_listing_every_file(tmp_path, capsys):
    root = _folders(tmp_path / "data", np.random.default_rng(0))
    (root / "test/fake/5.jpg").write_bytes((root / "train/real/0.jpg").read_bytes())  # a duplicate across splits
    (root / "train/fake/bad.jpg").write_bytes(b"not an image")
    main(["data", "scan", str(root), "--out", str(tmp_path / "manifest.csv")])
    printed = capsys.readouterr().out
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert list(manifest.columns) == ["path", "bytes", "sha256", "label", "generator", "split", "dataset"]
    assert len(manifest) == 25 and manifest.loc[manifest["path"] == "test/fake/5.jpg", "split"].item() == "data_test"
    row = manifest.set_index("path").loc["train/real/0.jpg"]
    assert row["bytes"] == (root / "train/real/0.jpg").stat().st_size and row["label"] == 0
    assert "Unreadable files: 1\n  train/fake/bad.jpg: not a readable image" in printed
    assert "Duplicates by content: 2 files in 1 groups (1 groups across splits, 1 with both labels)" in printed
    (root / "train/fake/bad.jpg").unlink()  # the manifest still lists it: now missing
    (root / "train/real/1.jpg").write_bytes((root / "train/real/2.jpg").read_bytes())  # changed
    _photo(np.random.default_rng(9)).save(root / "train/real/new.jpg")  # not in the manifest
    dm = DeepfakeDataModule(str(root), manifest=str(tmp_path / "manifest.csv"), num_workers=0)
    with pytest.raises(DataError, match=r"(?s)3 file\(s\) differ from the manifest.*Restore those files, or") as e:
        dm.setup("fit")
    message = str(e.value)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the scan checks a manifest it is given
        main(
            ["data", "scan", str(root), "--data.manifest", str(tmp_path / "manifest.csv"), "--out", str(tmp_path / "x")]
        )
    assert "3 file(s) differ from the manifest" in capsys.readouterr().err
    assert "train/fake/bad.jpg: in the manifest, not in the dataset" in message
    assert "train/real/1.jpg: changed" in message
    assert "train/real/new.jpg: in the dataset, not in the manifest" in message


def test_an_unchanged_dataset_passes_its_manifest_and_the_run_records_its_hash(tmp_path):
    from deepfake_lightning.files import file_sha256

    root = _folders(tmp_path / "data", np.random.default_rng(1))
    main(["data", "scan", str(root), "--out", str(tmp_path / "m.csv")])
    dm = DeepfakeDataModule(str(root), manifest=str(tmp_path / "m.csv"), num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    identity = dm.data_identity()["data"]
    assert identity["manifest"]["sha256"] == file_sha256(tmp_path / "m.csv")
    assert identity["kind"] == "folders" and identity["rows"] == 12
    line = ModelFacts(training_data=identity).dataset  # the model card's "trained on" line
    assert line.startswith(f"{root.resolve()} (folders layout): 12 images, 50.0 % AI-generated (sha256 ")
    assert line.endswith(
        f"checked against the manifest {(tmp_path / 'm.csv').resolve()} (sha256 {identity['manifest']['sha256'][:12]})"
    )


def test_leakage_counts_exact_and_near_duplicates_per_set(tmp_path):
    rng = np.random.default_rng(2)
    train = []
    for i in range(20):
        _photo(rng).save(tmp_path / f"t{i}.png")
        train.append(f"t{i}.png")
    (tmp_path / "exact.png").write_bytes((tmp_path / "t0.png").read_bytes())
    buf = io.BytesIO()  # t1 re-encoded as JPEG and resized: the same picture, other bytes
    Image.open(tmp_path / "t1.png").resize((56, 56)).save(buf, "JPEG", quality=80)
    (tmp_path / "near.jpg").write_bytes(buf.getvalue())
    others = []
    for i in range(98):
        _photo(rng).save(tmp_path / f"o{i}.png")
        others.append(f"o{i}.png")
    report = leakage_report({"test": ["exact.png", "near.jpg", *others], "clean": others}, train, root=tmp_path)
    test, clean = report["sets"]["test"], report["sets"]["clean"]
    assert (test["exact"], test["near"], test["images"]) == (1, 2 + clean["near"], 100)
    assert test["flagged"] and test["near_share"] == pytest.approx(test["near"] / 100)
    assert {e["train_image"] for e in test["examples"][:2]} == {"t0.png", "t1.png"}
    assert clean["exact"] == 0 and clean["near"] <= 1  # unrelated random pictures: (almost) never within 4 bits


def test_nearest_is_the_hamming_distance():
    a = np.array([0b1011, 0xFFFF], dtype=np.uint64)
    ref = np.array([0b0011, 0xFF00, 0], dtype=np.uint64)
    distance, where = nearest(a, ref)
    expected = [[bin(int(x) ^ int(r)).count("1") for r in ref] for x in a]
    assert distance.tolist() == [min(e) for e in expected] and where.tolist() == [int(np.argmin(e)) for e in expected]
