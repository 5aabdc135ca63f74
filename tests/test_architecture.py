"""The package's structure: no import cycles, light commands stay light, the private third-party members we rely
on still exist (and their packages are capped), callbacks do not depend on their order."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deepfake_lightning"


def _module_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside functions (lazy imports count too)."""
    modules = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {m: set() for m in modules}
    for name, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = _module_graph()
    assert "deepfake_lightning.calibration.state" in graph  # the walk sees the package
    assert _cycles(graph) == []


def test_the_packages_have_no_import_cycle():
    """Between packages too (``data``, ``models``, ``explain``, ``commands``, and each top-level module): a command
    module inside a feature that imports the CLI closed a loop of 10 packages without any module-level cycle."""
    unit = lambda module: ".".join(module.split(".")[:2])  # noqa: E731
    packages: dict[str, set[str]] = {}
    for module, targets in _module_graph().items():
        packages.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    assert {"deepfake_lightning.commands", "deepfake_lightning.data", "deepfake_lightning.api"} <= packages.keys()
    assert _cycles(packages) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.slow
def test_fit_does_not_import_optuna():
    code = (
        "import sys\nfrom deepfake_lightning.cli import main\n"
        "try:\n    main(['fit', '--config', 'configs/demo.yaml', '--print_config'])\nexcept SystemExit:\n    pass\n"
        "print('\\nIMPORTED', sorted(m for m in ('optuna', 'optuna_integration', 'litserve') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "model:" in out.stdout, out.stderr  # the fit config was printed: the fit parser was built
    assert out.stdout.strip().splitlines()[-1] == "IMPORTED []"


# The private (or undocumented) members of other packages that this package uses, and where. Members set on
# instances are looked up on an instance that `_instance` builds.
PRIVATE_MEMBERS = [
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_save_last_checkpoint", "callbacks/checkpoint.py"),
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_monitor_candidates", "callbacks/checkpoint.py"),
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_should_skip_saving_checkpoint", "callbacks/checkpoint.py"),
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_should_save_on_train_epoch_end", "callbacks/checkpoint.py"),
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_last_global_step_saved", "callbacks/checkpoint.py"),
    ("lightning.fabric.utilities.seed", None, "_collect_rng_states", "callbacks/checkpoint.py"),
    ("lightning.fabric.utilities.seed", None, "_set_rng_states", "callbacks/checkpoint.py"),
    ("lightning.pytorch.cli", "LightningCLI", "_parser", "lightning_cli.py"),
    ("lightning.pytorch.cli", "LightningCLI", "_parse_ckpt_path", "lightning_cli.py (checkpoint read first)"),
    ("lightning.pytorch.cli", "LightningArgumentParser", "callback_keys", "lightning_cli.py (callbacks aside)"),
    ("lightning.pytorch.cli", "LightningArgumentParser", "_actions", "lightning_cli.py (did you mean)"),
    ("jsonargparse", "ArgumentParser", "_actions", "sweep/spec.py (did you mean)"),
    ("lightning.pytorch", "LightningModule", "_trainer", "models/classifier.py (provenance on save)"),
    ("lightning.pytorch.overrides.distributed", None, "UnrepeatedDistributedSampler", "data/datamodule.py"),
    ("lightning.pytorch.loops", "_TrainingEpochLoop", "batch_progress", "callbacks/run_summary.py"),
    ("optuna.trial", "Trial", "_trial_id", "sweep/trial.py (heartbeats)"),
    ("pytorch_grad_cam", "GradCAM", "compute_cam_per_layer", "explain/cam.py"),
    ("pytorch_grad_cam", "GradCAM", "activations_and_grads", "explain/cam.py (hooks released per batch)"),
]


def _instance(owner: type, member: str):
    """An instance of ``owner`` for the members that only instances have."""
    if member == "_trial_id":
        import optuna

        return optuna.create_study().ask()
    if member in ("callback_keys", "_actions"):
        return owner()
    if member == "batch_progress":
        import lightning as L

        return L.Trainer(logger=False, enable_checkpointing=False).fit_loop.epoch_loop
    if member == "activations_and_grads":
        from torch import nn

        net = nn.Sequential(nn.Conv2d(3, 2, 3))
        return owner(net, [net[0]])
    if member == "_trainer":
        return owner()
    return owner() if member == "_last_global_step_saved" else owner


@pytest.mark.parametrize(("module", "owner", "member", "used_in"), PRIVATE_MEMBERS, ids=lambda v: str(v))
def test_private_members_we_use_still_exist(module, owner, member, used_in):
    import importlib

    obj = importlib.import_module(module)
    if owner:
        obj = _instance(getattr(obj, owner), member)
    assert hasattr(obj, member), (
        f"{module}.{owner or ''}.{member} is gone in the installed version; update "
        f"deepfake_lightning/{used_in} and the version cap in pyproject.toml"
    )


def test_the_private_member_list_names_every_private_use_in_the_package():
    """Every `._name` the package reads from another package's object is in PRIVATE_MEMBERS (so the list is true):
    names our own code defines (functions, attributes, modules) are ours."""
    import re

    code = {f: f.read_text() for f in PACKAGE.rglob("*.py")}
    ours = {f.stem for f in code if f.stem.startswith("_")}
    for text in code.values():
        ours |= {a or b for a, b in re.findall(r"def (_\w+)|self\.(_\w+)\s*(?::[^=]+)?=", text)}
        ours |= set(re.findall(r"^\s*(_\w+)\s*(?::[^=]+)?=", text, re.M))
    used = set()
    for text in code.values():
        code_only = re.sub(r'""".*?"""|#[^\n]*', "", text, flags=re.S)  # not docstrings or comments
        used |= set(re.findall(r"(?<![\w.])\w+\.(_[a-z]\w*)\b", code_only))
    listed = {member for _, _, member, _ in PRIVATE_MEMBERS}
    assert used - ours - listed == set(), f"private members used but not in PRIVATE_MEMBERS: {used - ours - listed}"


def test_packages_whose_internals_we_use_are_capped():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("lightning", "optuna", "grad-cam", "jsonargparse"):
        spec = next(d for d in deps if d.split("[")[0].split(">")[0].split("<")[0].strip() == name)
        assert "<" in spec, f"{name} is used through internals and needs an upper bound: {spec!r}"


def test_metrics_json_holds_calibration_whatever_the_callback_order(kaggle_root, tmp_path):
    """MetricsJson registered before Calibration (the order that lost the calibration keys) still records them."""
    import lightning as L

    from deepfake_lightning import DeepfakeClassifier, DeepfakeDataModule
    from deepfake_lightning.callbacks import Calibration, MetricsJson, RunCheckpoint

    L.seed_everything(0)
    dm = DeepfakeDataModule(
        root=str(kaggle_root), demo=False, test_v1_csv="test_v1.csv", img_size=32, batch_size=8, num_workers=0
    )
    model = DeepfakeClassifier("test_resnet", pretrained=False)
    trainer = L.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[
            MetricsJson(),
            Calibration(method="platt"),
            RunCheckpoint(monitor="val/auroc", mode="max", save_last=True),
        ],
    )
    trainer.fit(model, dm)
    metrics = json.loads((Path(trainer.log_dir) / "metrics.json").read_text())
    assert metrics["calibration/platt_a"] == pytest.approx(model.calibration.calibrator.platt[0])
    assert metrics["val/ece"] == pytest.approx(model.calibration.val_after["ece"])


def test_only_checkpoints_py_calls_torch_load_and_always_weights_only():
    """One module owns model files: nothing else unpickles (`torch.load` anywhere else, or `weights_only=False`)."""
    calls = {}
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "pl_load"):
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.setdefault(str(f.relative_to(PACKAGE)), []).append(keywords.get("weights_only"))
    assert calls == {"checkpoints.py": ["True"]}, calls


def test_the_data_keys_listed_in_command_help_are_the_data_modules():
    import inspect

    from deepfake_lightning.commands import data_options
    from deepfake_lightning.data import DeepfakeDataModule

    keys = list(inspect.signature(DeepfakeDataModule).parameters)
    assert [k for k, _ in data_options()] == keys  # read from the data module's source, not listed again
    described = dict(data_options())
    assert described["root"] == "Data root holding the CSVs and image folders"
    assert described["bad_images"].startswith("`fail` on the first unreadable image")
    assert all(described[k] for k in keys), [k for k in keys if not described[k]]  # every key is documented
    for command in ("audit", "calibrate", "data", "adapt", "timeline"):  # every key, with what it does
        run = subprocess.run(
            [sys.executable, "-m", "deepfake_lightning.cli", command, "--help"], capture_output=True, text=True
        )
        table = run.stdout.split("\ndata options (")[1].splitlines()
        lines = {line.split()[0]: line for line in table if line.startswith("  --data.")}
        assert list(lines) == [f"--data.{k}" for k in keys], command
        assert "Data root holding the CSVs and image folders" in lines["--data.root"], command
        probe = (
            f"from deepfake_lightning.cli import main\ntry: main(['{command}', '--help'])\nexcept SystemExit: pass\n"
        )
        probe += "import sys; print('torch' in sys.modules)"
        loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.split()
        assert loaded[-1] == "False", f"deepfake {command} --help loaded torch"


def _threshold_comparisons(source: str) -> list[int]:
    """Lines of ``source`` that compare something with a threshold (``p >= threshold``, ``x < self.threshold``...):
    a name or attribute whose name holds ``threshold`` on either side of an ordering comparison."""

    def named_threshold(node) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        return "threshold" in name  # not an image filter's constant (data/reshare.py's SHARPEN_THRESHOLD)

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Lt | ast.LtE | ast.Gt | ast.GtE) for op in node.ops
        ):
            if any(named_threshold(side) for side in [node.left, *node.comparators]):
                found.append(node.lineno)
    return found


def test_one_module_compares_a_probability_with_the_threshold():
    """The verdict's threshold comparison lives in scoring.py alone (threshold selection in
    calibration/thresholds.py excepted): every other module calls ``decide`` or a scorer's ``labels``."""
    allowed = {PACKAGE / "scoring.py", PACKAGE / "calibration" / "thresholds.py"}
    elsewhere = {
        str(f.relative_to(ROOT)): lines
        for f in sorted(PACKAGE.rglob("*.py"))
        if f not in allowed and (lines := _threshold_comparisons(f.read_text()))
    }
    assert elsewhere == {}
    assert _threshold_comparisons((PACKAGE / "scoring.py").read_text())  # the one place


def test_the_threshold_comparison_check_finds_comparisons():
    src = "a = p >= threshold\nb = 0.3 < self.threshold\nc = x > y\nd = int(p >= model.decision_threshold)\n"
    src += "e = diff > SHARPEN_THRESHOLD\n"
    assert _threshold_comparisons(src) == [1, 2, 4]


def test_the_uncalibrated_threshold_is_written_once():
    """The uncalibrated default 0.5 appears as a literal only where it is defined (settings.py)."""
    literal = []
    for f in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.keyword | ast.arg) and "threshold" in (getattr(node, "arg", "") or ""):
                value = node.value if isinstance(node, ast.keyword) else None
                if isinstance(value, ast.Constant) and value.value == 0.5:
                    literal.append(f"{f.relative_to(ROOT)}:{node.value.lineno}")
            if isinstance(node, ast.FunctionDef):
                args = node.args.args[len(node.args.args) - len(node.args.defaults) :]
                for arg, default in zip(args, node.args.defaults, strict=True):
                    if "threshold" in arg.arg and isinstance(default, ast.Constant) and default.value == 0.5:
                        literal.append(f"{f.relative_to(ROOT)}:{default.lineno}")
            if isinstance(node, ast.AnnAssign | ast.Assign):
                targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
                names = [t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in targets]
                if any("threshold" in n.lower() for n in names) and isinstance(node.value, ast.Constant):
                    if node.value.value == 0.5 and f.name != "settings.py":
                        literal.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert literal == []


def test_each_module_holds_one_concern_within_its_size():
    """Rooms of one concern each: no package module over 400 lines, the LightningModule at most 300."""
    sizes = {str(f.relative_to(PACKAGE)): len(f.read_text().splitlines()) for f in PACKAGE.rglob("*.py")}
    assert {f: n for f, n in sizes.items() if n > 400} == {}
    assert sizes["models/classifier.py"] <= 300 and sizes["data/datamodule.py"] <= 400
