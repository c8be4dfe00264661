"""Knowledge distillation (J4-14/15): the teacher's softened outputs guide the student.

loss = alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE(s, y)
The T^2 factor keeps the soft term's gradients on the scale of the hard term's (Hinton et al., 2015).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_T = 4.0
DEFAULT_ALPHA = 0.7


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      T: float = DEFAULT_T, alpha: float = DEFAULT_ALPHA, label_smoothing: float = 0.0) -> torch.Tensor:
    if T <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need T > 0 and 0 <= alpha <= 1, got T={T}, alpha={alpha}")
    s, t = student_logits.float(), teacher_logits.float().detach()
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), reduction="batchmean",
                    log_target=True) * (T * T)
    hard = F.cross_entropy(s, labels, label_smoothing=label_smoothing)
    return alpha * soft + (1.0 - alpha) * hard


@torch.inference_mode()
def soft_labels(teacher: torch.nn.Module, images: torch.Tensor, T: float = DEFAULT_T, batch_size: int = 1000) -> torch.Tensor:
    """Teacher probabilities at temperature T for a tensor of normalised images (J3-14)."""
    teacher.eval()
    return torch.cat([F.softmax(teacher(images[i:i + batch_size]).float() / T, dim=1)
                      for i in range(0, len(images), batch_size)])
