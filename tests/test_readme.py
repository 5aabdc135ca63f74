"""The README is a test: every `deepfake ...` command in its shell blocks and in the docs/ pages it links is run
here, in reading order (each page at its first link), from a
fresh project directory (the configs, the notebooks and a demo data build), as a new user would after the
quickstart. Commands run with tiny limits added (one short epoch, two-trial sweeps, a short timeline), and each
must exit 0 and write the files the README says. Commands that need what this machine lacks are listed in
CANNOT_RUN with the reason, and must fail with one clear `deepfake: error:` line. Both notebooks then run from
`notebooks/` with no environment variables."""

import contextlib
import glob
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from deepfake_lightning.cli import main
from deepfake_lightning.export.card import read_card_metadata
from tests.helpers.layouts import LAYOUTS, relayout

pytestmark = pytest.mark.slow  # every README command, end to end, as a new user runs them

ROOT = Path(__file__).resolve().parents[1]

# Substring of a command -> why it cannot run here. Each of these must fail with one `deepfake: error:` line.
CANNOT_RUN = {
    "configs/convnext.yaml": "needs the Kaggle data (and ImageNet weights from the Hugging Face hub)",
    "configs/resnet50.yaml": "needs the Kaggle data (and ImageNet weights from the Hugging Face hub)",
    "configs/efficientnet_b0.yaml": "needs the Kaggle data (and ImageNet weights from the Hugging Face hub)",
    "configs/sweep_backbones.yaml": "needs the Kaggle data (and a GPU to finish in reasonable time)",
    "configs/clip_probe.yaml": "needs the Kaggle data and CLIP ViT-L/14 weights from the Hugging Face hub",
    "@dbhost/": "needs a PostgreSQL server on the host dbhost",
}
# ... except these, which succeed without the data (printing the resolved config).
RUNS_WITHOUT_DATA = ("--print_config",)
# Added to every fit (and to every trial of a sweep): one short epoch.
TINY_FIT = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 2,
    "data.num_workers": 0,
}
# Commands run in a separate process: DDP starts its other ranks by running the command line again.
IN_SUBPROCESS = ("--trainer.strategy ddp",)


def documentation() -> str:
    """The README with each page of docs/ it links put in at its first link, in the README's order: the order a
    reader follows, and the order their commands run in."""
    out, seen = [], set()
    for line in (ROOT / "README.md").read_text().splitlines():
        out.append(line)
        for page in re.findall(r"\]\((docs/[\w-]+\.md)\)", line):
            if page not in seen:
                seen.add(page)
                out.append((ROOT / page).read_text())
    return "\n".join(out)


def readme_commands(program: str = "deepfake") -> list[str]:
    """Every `deepfake` (or other ``program``) command in the bash blocks of the README and its docs/ pages,
    continuation lines joined, comments dropped."""
    text = documentation()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()
                if part.startswith(f"{program} "):
                    commands.append(" ".join(part.split()))
    return commands


COMMANDS = readme_commands()
CURLS = readme_commands("curl")  # the serving API's examples, sent to the README's `deepfake serve`


def _reason(command: str) -> str | None:
    if any(flag in command for flag in RUNS_WITHOUT_DATA):
        return None
    return next((why for key, why in CANNOT_RUN.items() if key in command), None)


@pytest.fixture(scope="module")
def project(demo_root, tmp_path_factory) -> Path:
    """A fresh project directory: configs and notebooks as committed, the demo data as built, user images, and
    the sweep files shrunk to two one-epoch trials."""
    d = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "configs", d / "configs")
    shutil.copytree(ROOT / "notebooks", d / "notebooks")
    shutil.copytree(demo_root, d / "data" / "demo")
    (d / "photos").mkdir()
    for i, f in enumerate(pd.read_csv(demo_root / "test.csv")["id"][:3]):
        shutil.copy(demo_root / f, d / "photos" / f"p{i}.jpg")
    shutil.copy(demo_root / pd.read_csv(demo_root / "test_v1.csv")["id"][0], d / "photo.jpg")
    (d / "new_generator").mkdir()  # docs/adapt.md: 20 images of a generator the demo detector never saw
    test_v2 = pd.read_csv(demo_root / "test.csv")
    for f in test_v2.loc[test_v2["label"] == 1, "id"][:20]:
        shutil.copy(demo_root / f, d / "new_generator" / Path(f).name)
    for kind in LAYOUTS:  # "Your own data": the demo's train and test_v1 images as public datasets lay them out
        relayout(demo_root, kind, d / "data" / kind)
    for sweep in (d / "configs").glob("sweep_*demo.yaml"):
        spec = yaml.safe_load(sweep.read_text())
        spec["n_trials"] = 2
        spec["overrides"] = {**spec.get("overrides", {}), **TINY_FIT}
        if spec.get("objective", {}).get("metric") == "val/f1_tuned":
            # A 3-batch model is as likely anti-correlated as not (val AUROC 0.24-0.48 measured), and then
            # calibration refuses it and the tuned F1 does not exist: the shrunk trials rank by val/auroc.
            spec["objective"] = {**spec["objective"], "metric": "val/auroc"}
        sweep.write_text(yaml.safe_dump(spec))
    return d


def _argv(command: str, project: Path) -> list[str]:
    argv = []
    for token in shlex.split(command)[1:]:
        matches = sorted(glob.glob(str(project / token))) if "*" in token else []
        argv.append(str(Path(matches[-1]).relative_to(project)) if matches else token)
    if argv[0] == "fit" and "--print_config" not in argv:
        argv += [f"--{k}={v}" for k, v in TINY_FIT.items()]
    elif argv[0] == "timeline":  # a short first window and short adaptations, as fits get one short epoch
        argv += ["--data.num_workers=0", "--timeline.initial_steps=20", "--adapt.steps=5"]
    elif argv[0] in ("test", "predict", "validate", "calibrate"):
        argv += ["--data.num_workers=0"]
    return argv


# _outputs knows these
OUTPUTS_CHECKED = (
    "fit", "test", "predict", "calibrate", "explain", "export", "sweep", "audit", "data", "compare", "adapt",
    "timeline",
)  # fmt: skip


def _outputs(argv: list[str], project: Path) -> list[Path]:
    """The files the README says this command writes (looked up right after it ran)."""
    assert argv[0] in OUTPUTS_CHECKED, f"no expectation for {argv}"
    return OUTPUTS[argv[0]](_Command(argv, project))


@dataclass
class _Command:
    argv: list[str]
    project: Path

    def newest(self, pattern: str) -> Path:
        found = sorted(self.project.glob(pattern), key=lambda p: p.stat().st_mtime)
        assert found, f"nothing matches {pattern}"
        return found[-1]

    def option(self, name: str) -> str | None:
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None

    def out(self, *names: str) -> list[Path]:
        return [self.project / self.option("--out") / name for name in names]


def _fit(c: _Command) -> list[Path]:
    run = c.newest(f"{c.option('--trainer.default_root_dir') or '.'}/lightning_logs/version_*/config.yaml").parent
    return [
        run / "metrics.json",
        run / "checkpoints" / "last.ckpt",
        run / "split.csv",
        run / "calibration" / "calibration.json",
    ]


def _test(c: _Command) -> list[Path]:
    run = c.newest("**/eval/test_*/report.json").parent
    files = [run / "report.json", run / "config.yaml"]
    if c.option("--data.test_sets"):  # named test sets: each one's predictions, and the cross-dataset table
        own = f"{Path(c.option('--data.root')).name}_test"  # the root's own test folder, named after it
        sets = ["val", own, *yaml.safe_load(c.option("--data.test_sets"))]
        return files + [run / "cross_dataset.csv"] + [run / "predictions" / f"{s}.csv" for s in sets]
    files += [run / "predictions" / f"{s}.csv" for s in ("val", "test_v1", "test_v2")]
    files += [run / "plots" / f"{s}.png" for s in ("val", "test_v1", "test_v2")]
    if c.option("--report.robustness") == "true":
        files += [run / "robustness.csv", run / "robustness.png"]
    return files


def _predict(c: _Command) -> list[Path]:
    run = c.newest("**/eval/predict_*/config.yaml").parent
    if c.option("--data.predict_paths"):
        return [run / "predictions" / "files.csv"]
    split = c.option("--data.predict_split") or "test_v2"
    return [run / "predictions" / f"{split}.csv", run / f"submission_{split}.csv"]


def _export(c: _Command) -> list[Path]:
    formats = c.argv[c.argv.index("--format") + 1 :] if "--format" in c.argv else ["safetensors"]
    return c.out("detector.json", "README.md", *[f"model.{f}" for f in formats])


def _sweep(c: _Command) -> list[Path]:
    study = c.option("--study_name") or yaml.safe_load((c.project / c.option("--config")).read_text())["study_name"]
    files = [c.project / "sweeps" / study / "trials.csv", c.project / "sweeps" / study / "best.yaml"]
    return files + ([c.project / "sweeps" / study / "comparison.md"] if "backbones" in study else [])


OUTPUTS = {
    "fit": _fit,
    "test": _test,
    "predict": _predict,
    "calibrate": lambda c: [c.project / (c.option("--out") or c.option("--ckpt_path"))],
    "explain": lambda c: c.out("explanations.csv"),
    "audit": lambda c: c.out("audit.json", "audit.md"),
    "data": lambda c: [c.project / c.option("--out")],
    "compare": lambda c: c.out(*(f"matrix_auroc.{ext}" for ext in ("csv", "md", "png"))),
    "export": _export,
    "sweep": _sweep,
    "adapt": lambda c: c.out("adapted.ckpt", "adapt_report.json"),
    "timeline": lambda c: c.out("timeline.csv", "timeline.json", "timeline.png"),
}
assert set(OUTPUTS) == set(OUTPUTS_CHECKED)


def _serve_and_send_the_curls(argv: list[str], project: Path) -> None:
    """`deepfake serve ...` as the README shows it (on a free port instead of 8000), then every `curl` example
    of the README against it, from the project directory, checking what each answers."""
    import json

    from PIL import Image

    from deepfake_lightning.serving.process import ServerProcess

    assert CURLS, "the README shows no curl example of the API"
    with ServerProcess(argv[1:] + ["--log_level", "warning"], cwd=project) as server:
        for curl in CURLS:
            command = curl.replace("http://127.0.0.1:8000", server.url)
            out = subprocess.run(command, shell=True, cwd=project, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"{curl}\n{out.stdout}{out.stderr}"
            if "| python" in curl:  # saves the Grad-CAM overlay
                assert Image.open(project / "cam.png").format == "PNG", curl
                continue
            answer = json.loads(out.stdout)
            if "@photo.jpg" in curl:
                assert 0 <= answer["prob_ai"] <= 1 and answer["label"] == int(answer["prob_ai"] >= answer["threshold"])
            else:  # the example of a bad upload
                assert answer["error"] == "not_an_image", answer


def _run_in_subprocess(argv: list[str], project: Path) -> tuple[int, str]:
    out = subprocess.run(["deepfake", *argv], cwd=project, capture_output=True, text=True, timeout=600)
    return out.returncode, out.stdout + out.stderr


@dataclass
class Ran:
    """What one README command did: its argv as run, exit code, output, start time, and an error raised in it."""

    argv: list[str]
    code: int = 0
    output: str = ""
    err: str = ""
    started: float = 0.0
    error: str | None = None
    written: dict[str, tuple[int, float]] | None = None  # the files it should write: size and mtime, right after it


def _run(command: str, project: Path) -> Ran:
    ran = Ran(_argv(command, project), started=time.time())
    if ran.argv[0] == "serve":  # runs until stopped
        _serve_and_send_the_curls(ran.argv, project)
    elif any(flag in command for flag in IN_SUBPROCESS):
        ran.code, ran.output = _run_in_subprocess(ran.argv, project)
        ran.err = ran.output
    else:
        out, err = io.StringIO(), io.StringIO()
        argv = sys.argv
        sys.argv = ["deepfake", *shlex.split(command)[1:]]
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(ran.argv)
        except SystemExit as e:
            ran.code = e.code or 0
        finally:
            sys.argv = argv
        ran.output, ran.err = out.getvalue() + err.getvalue(), err.getvalue()
    if ran.argv[0] in OUTPUTS_CHECKED and _reason(command) is None and "--print_config" not in command and not ran.code:
        files = _outputs(ran.argv, project)
        ran.written = {str(f): (f.stat().st_size, f.stat().st_mtime) if f.is_file() else (0, 0.0) for f in files}
    return ran


@pytest.fixture(scope="module")
def readme(project) -> list[Ran]:
    """Every README command, run in README order from the project directory, as a new user would: each test below
    checks one command's record, so any of them can run alone and in any order."""
    cwd = os.getcwd()
    os.chdir(project)
    ran = []
    try:
        for command in COMMANDS:
            try:
                ran.append(_run(command, project))
            except Exception:  # recorded: that command's test fails with it, the later commands still run
                ran.append(Ran(_argv(command, project), code=-1, error=traceback.format_exc()))
    finally:
        os.chdir(cwd)
    return ran


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[f"{i:02d}" for i in range(len(COMMANDS))])
def test_readme_command(index, readme, project):
    command, ran = COMMANDS[index], readme[index]
    assert ran.error is None, f"{command} raised:\n{ran.error}"
    argv, code, output, err = ran.argv, ran.code, ran.output, ran.err
    if argv[0] == "serve":
        return  # its checks ran with the server (_serve_and_send_the_curls)
    reason = _reason(command)
    if reason is not None:
        assert code == 2, f"{command} should fail here ({reason}), exit {code}:\n{output[-2000:]}"
        errors = [line for line in err.splitlines() if line.startswith("deepfake: error:")]
        assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
        return
    assert code == 0, f"{command} exited {code}:\n{output[-3000:]}"
    if "--print_config" in command:
        printed = yaml.safe_load(output)
        if argv[0] == "sweep":  # the sweep file as parsed: the project's (shrunk) demo sweep
            assert printed["study_name"] == "demo" and printed["n_trials"] == 2 and printed["workers"] == 1
        else:
            assert printed["model"]["backbone"] == "convnext_tiny"
        return
    assert ran.written, f"{command}: no output files recorded"
    for path, (size, mtime) in ran.written.items():
        assert size > 0, f"{command}: {path} missing"
        assert mtime >= ran.started - 1, f"{command}: {path} not written by this command"


def test_every_docs_page_is_linked_and_every_relative_link_resolves():
    """docs/ is reachable from the README (so its commands run), and no link of the README or a page is dead."""
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    linked = re.findall(r"\]\((docs/[\w-]+\.md)\)", (ROOT / "README.md").read_text())
    assert pages and sorted(set(linked)) == pages
    dead = []
    for page in [ROOT / "README.md", *(ROOT / p for p in pages)]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"(https?:|mailto:|#)", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                dead.append(f"{page.relative_to(ROOT)}: {target}")
    assert dead == []


def test_every_readme_command_is_covered():
    """Every README command is checked: it cannot run here (CANNOT_RUN, then it must fail with one clear line),
    prints a config, is the server (checked with its curl examples), or is a command whose files `_outputs` knows.
    And every CANNOT_RUN entry still names a README command (no stale exception)."""
    unchecked = [
        c
        for c in COMMANDS
        if _reason(c) is None and "--print_config" not in c and shlex.split(c)[1] not in (*OUTPUTS_CHECKED, "serve")
    ]
    assert unchecked == [], f"README commands whose outputs no test checks: {unchecked}"
    assert [key for key in CANNOT_RUN if not any(key in c for c in COMMANDS)] == []


def test_readme_commands_ran_what_they_said(readme, project):
    """Cross-checks after the commands above: the quickstart run holds only training runs at the top level, and
    the flags of the test-time-augmentation command are what its evaluation recorded."""
    runs = sorted(p.name for p in (project / "lightning_logs").iterdir())
    assert all(name.startswith("version_") for name in runs)
    configs = [
        yaml.safe_load(p.read_text())
        for p in (project / "lightning_logs" / "version_0" / "eval").glob("test_*/config.yaml")
    ]
    assert any(c["model"]["tta_flip"] is True and c["data"]["eval_views"] == 5 for c in configs)
    calibrated = torch.load(project / "calibrated.ckpt", map_location="cpu", weights_only=True)["calibration"]
    assert calibrated["calibrator"]["method"] == "platt"
    card = read_card_metadata(project / "models" / "demo_card" / "README.md")  # test results, then the export
    assert {"validation", "val", "test_v1", "test_v2"} <= {
        r["dataset"]["name"] for r in card["model-index"][0]["results"]
    }


def test_notebooks_run_from_their_folder_after_the_quickstart(readme, project, monkeypatch):
    import nbclient
    import nbformat

    for key in ("DEEPFAKE_CKPT", "DEEPFAKE_LOGS", "DEEPFAKE_DATA_ROOT", "DEEPFAKE_STUDY"):
        monkeypatch.delenv(key, raising=False)
    texts, images = {}, {}
    for name in ("01_explore_checkpoint.ipynb", "02_compare_runs.ipynb"):
        nb = nbformat.read(project / "notebooks" / name, as_version=4)
        nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(project / "notebooks")}}
        ).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        texts[name] = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
        images[name] = sum("image/png" in o.get("data", {}) for o in outputs)
    explore, compare = texts["01_explore_checkpoint.ipynb"], texts["02_compare_runs.ipynb"]
    # 01: the newest run's calibrated checkpoint, its data found again from notebooks/; ROC/PR/confusion per labelled
    # split (val, test_v1, test_v2, test_edited), threshold trade-off, reliability per split, Grad-CAM gallery
    assert "data/demo" in explore and "ai_share_em" in explore and "test_v2" in explore
    assert images["01_explore_checkpoint.ipynb"] == 10
    # 02: the runs, and the README's demo sweep (sweeps/demo): learning curves, objective against each parameter
    assert "val/auroc" in compare and "param:data.aug_strength" in compare
    assert images["02_compare_runs.ipynb"] == 2


def test_the_readme_python_runs_and_agrees_with_predict(readme, project, monkeypatch):
    """The Python API block, run in the project after the quickstart: its probability is the one `deepfake predict`
    wrote for the same file with the same checkpoint."""
    blocks = re.findall(r"```python\n(.*?)```", documentation(), re.S)
    assert blocks, "the README shows no Python"
    monkeypatch.chdir(project)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)
    probs, is_ai = scope["probs"], scope["is_ai"]
    assert len(probs) == 1 and 0 < probs[0] < 1 and is_ai.tolist() == [int(probs[0] >= scope["detector"].threshold)]
    detector = scope["detector"]
    argv = ["predict", "--config", "configs/demo.yaml", "--ckpt_path", detector.source, "--data.num_workers=0"]
    argv += ["--data.predict_paths=[photo.jpg]", "--trainer.enable_progress_bar=false"]
    main(argv)
    newest = max(
        project.glob("lightning_logs/version_0/eval/predict_last*/predictions/files.csv"), key=os.path.getmtime
    )
    assert pd.read_csv(newest)["prob_ai"].iloc[0] == pytest.approx(float(probs[0]), abs=1e-5)
