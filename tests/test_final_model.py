"""The committed final model must still clear the bar: evaluated here, on the CPU, on the full test set."""
import pytest
import torch

from fastcifar.core import data, engine, env
from fastcifar.series.report import SEED_BAR as BAR

FINAL = env.project_root() / "outputs" / "final_model.pt"


@pytest.mark.skipif(not FINAL.is_file(), reason="no final model committed yet (J5 on a GPU exports it)")
def test_final_model_reaches_the_bar_on_the_full_test_set():
    cifar = data.load_cifar("cifar10")
    model, ckpt = engine.load_model(FINAL)
    images = data.to_tensor(cifar.test.images, "cpu", cifar.layout.mean, cifar.layout.std)
    labels = torch.as_tensor(cifar.test.labels)
    _, acc = engine.evaluate(model, images, labels, batch_size=500)
    print(f"final model {ckpt.get('id')} ({ckpt['model_name']}), FP32 on CPU: {acc:.2f}% on {len(labels)} test images")
    assert len(labels) == 10_000
    assert acc >= BAR
