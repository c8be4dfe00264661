import math

import pytest
import torch
import torch.nn.functional as F

from fastcifar.core.distill import distillation_loss, soft_labels


def test_loss_is_cross_entropy_when_alpha_is_zero():
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert distillation_loss(s, t, y, alpha=0.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


def test_soft_term_matches_the_seed_formula():
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    T = 4.0
    ref = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean") * T * T
    assert distillation_loss(s, t, y, T=T, alpha=1.0).item() == pytest.approx(ref.item(), rel=1e-5)


def test_soft_term_vanishes_when_student_equals_teacher():
    s = torch.randn(4, 10)
    assert distillation_loss(s, s.clone(), torch.zeros(4, dtype=torch.long), alpha=1.0).item() == pytest.approx(0, abs=1e-6)


def test_gradient_reaches_student_only():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10, requires_grad=True)
    distillation_loss(s, t, torch.zeros(4, dtype=torch.long)).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("T,alpha", [(0.0, 0.5), (4.0, 1.5), (4.0, -0.1)])
def test_bad_settings_are_refused(T, alpha):
    with pytest.raises(ValueError):
        distillation_loss(torch.randn(2, 10), torch.randn(2, 10), torch.zeros(2, dtype=torch.long), T=T, alpha=alpha)


def test_soft_labels_are_probabilities_and_flatten_with_temperature():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    x = torch.randn(5, 3, 4, 4)
    p1, p4 = soft_labels(teacher, x, T=1.0, batch_size=2), soft_labels(teacher, x, T=4.0, batch_size=2)
    assert p1.shape == (5, 10) and torch.allclose(p1.sum(1), torch.ones(5), atol=1e-5)
    entropy = lambda p: -(p * p.log()).sum(1)
    assert (entropy(p4) > entropy(p1)).all() and (entropy(p4) <= math.log(10) + 1e-5).all()
