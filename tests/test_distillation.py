"""one-by-one's distillation: the KD terms shared by its client guidance and its fusion."""

import torch

from fclkit_builtins.one_by_one.distillation import kd_loss, kd_loss_to_targets, soft_targets


def test_row_weights_scale_each_rows_kl_before_the_mean():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    targets = soft_targets(teacher, 2.0, [1, 3, 4])
    plain = kd_loss_to_targets(student, targets, 2.0, [1, 3, 4])
    assert torch.allclose(kd_loss_to_targets(student, targets, 2.0, [1, 3, 4],
                                             torch.ones(6)), plain)
    assert kd_loss_to_targets(student, targets, 2.0, [1, 3, 4], torch.zeros(6)) == 0
    half = torch.tensor([1.0, 1, 1, 0, 0, 0])
    first = kd_loss_to_targets(student[:3], targets[:3], 2.0, [1, 3, 4])
    assert torch.allclose(kd_loss_to_targets(student, targets, 2.0, [1, 3, 4], half),
                          first / 2)  # the mean still divides by every row
    assert torch.allclose(kd_loss(student, teacher, 2.0, [1, 3, 4]), plain)
