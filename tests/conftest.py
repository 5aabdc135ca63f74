"""Shared fixtures: small Kaggle-layout datasets generated on the fly; CPU only, no network."""

import os

# Before anything imports huggingface_hub: never try the network (an offline lookup retries for ~45 s).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")
# One compute thread per test process (and per process a test starts): the suite runs in two pytest-xdist workers
# on the two cores (pyproject.toml), and the tiny test models gain nothing from a second thread. With two threads a
# process kept both cores busy (OpenMP's spinning threads) for the same work: a tiny fit took 5.3 s of CPU on one
# thread against 7.1 s on two, and no longer in wall time.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest

from deepfake_lightning.data.demo import DemoSpec, build_demo_dataset
from tests.helpers import CONFIGS, QUIET, make_kaggle_root


def pytest_collection_modifyitems(config, items):
    """The README walkthrough (one module fixture running every documented command, the longest unit of the suite)
    is scheduled first, so that the other worker runs the rest beside it instead of it running alone at the end."""
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_readme.py")


@pytest.fixture(scope="session")
def kaggle_root(tmp_path_factory) -> Path:
    """A small labelled Kaggle-layout dataset, shared read-only by the session's tests."""
    return make_kaggle_root(tmp_path_factory.mktemp("kaggle"))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The real demo dataset (default spec, as configs/demo.yaml builds it), built once per session."""
    root = tmp_path_factory.mktemp("demo") / "demo"
    return build_demo_dataset(root, DemoSpec())


@pytest.fixture(scope="session")
def demo_run(trained_run) -> Path:
    """The trained demo run (``trained_run``); modules that check formats, errors and parity rather than what a
    model learned override this name with ``quick_run``."""
    return trained_run


def _demo_fit(root: Path, out: Path, *extra: str) -> Path:
    """`deepfake fit --config configs/demo.yaml` on the demo data at ``root`` into ``out``, quiet; its run folder."""
    from deepfake_lightning.cli import cli_main

    args = ["fit", "--config", str(CONFIGS / "demo.yaml"), f"--data.root={root}", f"--trainer.default_root_dir={out}"]
    cli_main([*args, *QUIET, "--trainer.enable_model_summary=false", *extra])
    return out / "lightning_logs" / "version_0"


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory) -> Path:
    """One full `deepfake fit --config configs/demo.yaml` (about 30 s), shared by the tests that need a trained,
    calibrated checkpoint. Returns the run directory (``.../lightning_logs/version_0``)."""
    return _demo_fit(demo_root, tmp_path_factory.mktemp("demo_run"))


@pytest.fixture(scope="session")
def quick_run(demo_root, tmp_path_factory) -> Path:
    """A calibrated demo checkpoint in seconds: `deepfake fit --config configs/demo.yaml` for one short epoch (3
    training batches), its calibration fitted as every fit's is. For the tests that check formats, errors, options
    and parity between commands rather than what a model learned (those use ``trained_run``). Returns the run
    directory (``.../lightning_logs/version_0``)."""
    return _demo_fit(
        demo_root, tmp_path_factory.mktemp("quick_run"), "--trainer.max_epochs=1", "--trainer.limit_train_batches=3"
    )


@pytest.fixture
def console():
    """What the console shows of Lightning's info lines and ours (both go through the `lightning.pytorch` logger,
    whose handler holds the stream it was created with, out of reach of capsys/capfd)."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def postgres_url():
    """A throw-away PostgreSQL server on loopback (Debian's `postgresql` package, which .ci/run installs),
    run as the `postgres` user; yields an SQLAlchemy URL of an empty database."""
    import glob
    import shutil
    import socket
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs Debian's postgresql package and root (to run the server as the postgres user)")
    bindir = Path(bins[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="deepfake-pg-"))
    shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_postgres(*cmd):
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], check=True, capture_output=True)

    as_postgres(bindir / "initdb", "-D", data / "db", "-A", "trust", "-U", "postgres")
    as_postgres(
        bindir / "pg_ctl",
        "-D",
        data / "db",
        "-l",
        data / "log",
        "-w",
        "start",
        "-o",
        f"-p {port} -h 127.0.0.1 -k {data}",
    )
    try:
        as_postgres(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "optuna")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(bindir / "pg_ctl"),
                "-D",
                str(data / "db"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)
