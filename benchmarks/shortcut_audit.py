"""Benchmark: both shortcut audits on the demo, unbiased and with a planted shortcut (every AI image saved as PNG).

For each demo build (``--data.demo_shortcut none`` and ``png``, each into its own fresh data root):

* ``deepfake audit``: the metadata-only classifier's AUROC and its top feature, on train (train + val) and test_v1;
* ``deepfake fit --config configs/demo.yaml`` then ``deepfake test --report.reencode true`` on the best checkpoint:
  test_v1 and test_v2 AUROC as the files are, and with every image re-encoded the same way.

And the cost of reading evidence (``evidence.py``) per image: a plain JPEG, a C2PA-signed JPEG (self-signed test
certificate, as in tests/test_evidence.py) and a PNG with generator text chunks.

    python benchmarks/shortcut_audit.py

Prints the tables and writes benchmarks/results/shortcut_audit.csv and evidence_cost.csv.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _results import publish  # benchmarks/_results.py, beside this script

from deepfake_lightning.cli import cli_main
from deepfake_lightning.commands.audit import audit_main
from deepfake_lightning.evidence import read_evidence

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def one_build(shortcut: str, work: Path) -> dict:
    data = [f"--data.root={work / 'data'}", f"--data.demo_shortcut={shortcut}"]
    config = ["--config", str(REPO / "configs" / "demo.yaml")]
    audit = audit_main(["--out", str(work / "audit"), *config, *data])
    start = time.perf_counter()
    cli_main(["fit", *config, *data, f"--trainer.default_root_dir={work}", *QUIET])
    fit_s = time.perf_counter() - start
    run = work / "lightning_logs" / "version_0"
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    cli = cli_main(
        [
            "test",
            *config,
            *data,
            f"--ckpt_path={best}",
            f"--data.split_file={run / 'split.csv'}",
            "--report.reencode=true",
            *QUIET,
        ]
    )
    report = next(c for c in cli.trainer.callbacks if hasattr(c, "reencode") and c.report is not None).report
    row = {"demo": shortcut, "fit_s": round(fit_s, 1)}
    for split in ("train", "test_v1"):
        r = audit["splits"][split]
        row[f"{split}_metadata_auroc"] = r["metadata_auroc"]
        row[f"{split}_flagged"] = r["flagged"]
        row[f"{split}_top_feature"] = f"{r['top_features'][0]['feature']} ({r['top_features'][0]['auroc']:.2f})"
    for split in ("test_v1", "test_v2"):
        auroc = report["reencode"][split]["auroc"]
        row[f"{split}_auroc"] = round(auroc["before"], 4)
        row[f"{split}_auroc_reencoded"] = round(auroc["after"], 4)
    return row


def evidence_cost(work: Path) -> pd.DataFrame:
    sys.path.insert(0, str(REPO / "tests"))
    import c2pa
    import numpy as np
    from PIL import Image, PngImagePlugin
    from test_evidence import _certificates, _sign

    chain, key, root = _certificates()
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg="es256", sign_cert=chain, private_key=key, ta_url=None))
    pixels = np.random.default_rng(0).integers(0, 256, (512, 768, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(work / "plain.jpg", quality=90)
    _sign(work / "plain.jpg", work / "signed.jpg", signer, "trainedAlgorithmicMedia")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a")
    Image.fromarray(pixels).save(work / "a1111.png", pnginfo=info)
    rows = []
    for name in ("plain.jpg", "signed.jpg", "a1111.png"):
        read_evidence(work / name, root.decode())
        start, n = time.perf_counter(), 50
        for _ in range(n):
            evidence = read_evidence(work / name, root.decode())
        ms = (time.perf_counter() - start) / n * 1000
        rows.append({"file": f"{name} (768x512)", "ms_per_image": round(ms, 2), "summary": evidence.summary})
    return pd.DataFrame(rows)


def main() -> None:
    sys.argv = sys.argv[:1]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shortcut in ("none", "png"):
            rows.append(one_build(shortcut, Path(tmp) / shortcut))
        table = pd.DataFrame(rows)
        publish(table, "shortcut_audit", transpose=True)
        publish(evidence_cost(Path(tmp)), "evidence_cost")
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
