from functools import partial

import lightning as L
import numpy as np
import pytest
import timm
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from deepfake_lightning import DeepfakeClassifier, DeepfakeDataModule
from deepfake_lightning.models import PretrainedWeightsUnavailable, create_backbone


@pytest.mark.parametrize(
    "name", ["resnet50", "convnext_tiny", "efficientnet_b0", "test_resnet", "test_convnext", "test_efficientnet"]
)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = DeepfakeClassifier(name, pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert model.data_config["input_size"][0] == 3 and len(model.data_config["mean"]) == 3


def test_channels_last_weights():
    model = DeepfakeClassifier("test_resnet", pretrained=False)
    convs = [m.weight for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="unknown timm model 'resnet5O'"):
        create_backbone("resnet5O")


def test_pretrained_without_network_names_both_alternatives():
    with pytest.raises(PretrainedWeightsUnavailable, match="(?s)--model.pretrained false.*--model.weights PATH"):
        create_backbone("test_resnet", pretrained=True)


def test_local_weights_file_is_loaded_and_head_replaced(tmp_path):
    torch.manual_seed(1)
    imagenet = timm.create_model("test_resnet", pretrained=False)  # 1000-class head, as timm ships it
    path = tmp_path / "weights.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_backbone("test_resnet", weights=str(path))
    ref = imagenet.state_dict()
    body = [k for k in ref if not k.startswith("fc.")]
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in body)
    assert model.get_classifier().out_features == 1
    with pytest.raises(FileNotFoundError, match="model.weights"):
        create_backbone("test_resnet", weights=str(tmp_path / "missing.pth"))


def _tiny_trainer(**kw):
    kw = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **kw,
    }
    return L.Trainer(**kw)


def _datamodule(root, **kw):
    return DeepfakeDataModule(str(root), test_v1_csv="test_v1.csv", img_size=32, batch_size=8, num_workers=0, **kw)


def test_freeze_backbone_trains_only_the_head_first(kaggle_root):
    L.seed_everything(0)
    model = DeepfakeClassifier(
        "test_resnet", pretrained=False, freeze_backbone_epochs=1, optimizer=partial(torch.optim.AdamW, lr=1e-2)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _tiny_trainer(limit_train_batches=2, limit_val_batches=1).fit(model, _datamodule(kaggle_root))
    after = model.state_dict()
    head = {k for k in after if k.startswith("net.fc.")}
    body_weights = [k for k in after if k not in head and after[k].is_floating_point() and "running" not in k]
    assert all(torch.equal(before[k], after[k]) for k in body_weights)
    assert not torch.equal(before["net.fc.weight"], after["net.fc.weight"])
    # second epoch: unfrozen, the body moves too
    model2 = DeepfakeClassifier(
        "test_resnet", pretrained=False, freeze_backbone_epochs=1, optimizer=partial(torch.optim.AdamW, lr=1e-2)
    )
    before2 = {k: v.clone() for k, v in model2.state_dict().items()}
    _tiny_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1).fit(model2, _datamodule(kaggle_root))
    assert not torch.equal(before2["net.conv1.0.weight"], model2.state_dict()["net.conv1.0.weight"])


def test_logged_metrics_match_sklearn_on_the_same_predictions(kaggle_root):
    L.seed_everything(0)
    model = DeepfakeClassifier("test_resnet", pretrained=False, optimizer=partial(torch.optim.AdamW, lr=3e-3))
    dm = _datamodule(kaggle_root, val_fraction=0.3)
    trainer = _tiny_trainer(max_epochs=2)
    trainer.fit(model, dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    dm.hparams.predict_split = "val"
    preds = trainer.predict(model, dm)
    prob = torch.cat([p["prob_ai"] for p in preds]).numpy()
    y = dm.indexes["val"]["label"].to_numpy()
    pred = (prob >= 0.5).astype(int)
    assert logged["val/acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert logged["val/precision"] == pytest.approx(precision_score(y, pred, zero_division=0), abs=1e-6)
    assert logged["val/recall"] == pytest.approx(recall_score(y, pred), abs=1e-6)
    assert logged["val/acc_ai"] == pytest.approx(recall_score(y, pred), abs=1e-6)
    assert logged["val/acc_human"] == pytest.approx(recall_score(1 - y, 1 - pred), abs=1e-6)
    assert logged["val/f1"] == pytest.approx(f1_score(y, pred), abs=1e-6)
    assert logged["val/auroc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-5)
    assert logged["val/tp"] == np.sum((pred == 1) & (y == 1)) and logged["val/fp"] == np.sum((pred == 1) & (y == 0))
    assert {"train/loss_epoch", "train/acc", "val/loss", "val/ap", "val/tn", "val/fn"} <= logged.keys()


def test_test_metrics_are_named_per_split(kaggle_root):
    model = DeepfakeClassifier("test_resnet", pretrained=False)
    trainer = _tiny_trainer()
    (results,) = [trainer.test(model, _datamodule(kaggle_root), verbose=False)]
    names = set().union(*[r.keys() for r in results])
    for split in ("test_v1", "test_v2"):
        assert {f"test/{split}/{m}" for m in ("auroc", "f1", "acc_human", "acc_ai", "tp", "loss")} <= names


def test_non_finite_loss_stops_with_a_clear_message(kaggle_root):
    model = DeepfakeClassifier("test_resnet", pretrained=False)
    with torch.no_grad():
        model.net.fc.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite training loss.*global step 0"):
        _tiny_trainer(limit_train_batches=1, limit_val_batches=0).fit(model, _datamodule(kaggle_root))


GRAPHS = []


def counting_backend(gm, example_inputs):
    """A torch.compile backend that records each graph it is given (module level: Lightning drops
    unpicklable hyperparameters such as local functions)."""
    GRAPHS.append(gm)
    return gm.forward


@pytest.mark.slow
def test_compile_runs_training_steps_through_the_compiled_backbone(kaggle_root):
    L.seed_everything(0)
    GRAPHS.clear()
    model = DeepfakeClassifier("test_resnet", pretrained=False, compile={"backend": counting_backend})
    eager_keys = list(DeepfakeClassifier("test_resnet", pretrained=False).state_dict())
    _tiny_trainer(limit_train_batches=2, limit_val_batches=1).fit(model, _datamodule(kaggle_root))
    assert GRAPHS, "training never went through torch.compile"
    assert isinstance(model.__dict__["_compiled_net"], torch._dynamo.eval_frame.OptimizedModule)
    assert list(model.state_dict()) == eager_keys  # checkpoints stay loadable without compile
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(model.__dict__["_compiled_net"](x).squeeze(-1), model(x), atol=1e-6)
