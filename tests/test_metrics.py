"""Metrics against accuracy matrices worked out by hand."""

import pytest

from fclkit import metrics

# R[i][j]: accuracy on task j after training task i (3 tasks)
R = [
    [0.9, 0.1, 0.0],
    [0.6, 0.8, 0.2],
    [0.3, 0.5, 0.7],
]
B = [0.1, 0.1, 0.1]  # accuracy before any training


def test_average_accuracy_is_mean_of_last_row():
    assert metrics.average_accuracy(R) == pytest.approx((0.3 + 0.5 + 0.7) / 3)


def test_accuracy_curve_averages_seen_tasks():
    assert metrics.accuracy_curve(R) == pytest.approx([0.9, (0.6 + 0.8) / 2, 0.5])
    assert metrics.average_incremental_accuracy(R) == pytest.approx((0.9 + 0.7 + 0.5) / 3)


def test_forgetting_uses_best_previous_accuracy():
    # task 0: best 0.9 (after task 0) -> 0.3 ; task 1: best 0.8 -> 0.5
    assert metrics.forgetting_per_task(R) == pytest.approx([0.6, 0.3])
    assert metrics.average_forgetting(R) == pytest.approx(0.45)


def test_forgetting_takes_max_not_diagonal():
    R2 = [[0.5, 0.0, 0.0], [0.9, 0.7, 0.0], [0.4, 0.7, 0.8]]
    # task 0 peaked after task 1 (0.9), not on the diagonal (0.5)
    assert metrics.forgetting_per_task(R2) == pytest.approx([0.5, 0.0])


def test_backward_transfer():
    assert metrics.backward_transfer(R) == pytest.approx(((0.3 - 0.9) + (0.5 - 0.8)) / 2)


def test_forward_transfer_against_initial_accuracy():
    assert metrics.forward_transfer(R, B) == pytest.approx(((0.1 - 0.1) + (0.2 - 0.1)) / 2)
    assert metrics.forward_transfer(R, None) is None


def test_one_task_has_no_transfer_or_forgetting():
    one = [[0.75]]
    s = metrics.summarize(one, [0.1])
    assert s["average_accuracy"] == 0.75
    assert s["average_forgetting"] is None
    assert s["backward_transfer"] is None
    assert s["forward_transfer"] is None


def test_forgetting_is_negative_when_final_accuracy_improves():
    # Chaudhry's max runs over the steps *before* the last: improving is negative forgetting
    R3 = [[0.5, 0.0], [0.6, 0.9]]
    assert metrics.average_forgetting(R3) == pytest.approx(-0.1)
    assert metrics.backward_transfer(R3) == pytest.approx(0.1)


def test_across_clients_means_scalars_and_matrices():
    a = metrics.summarize([[1.0, 0.0], [0.5, 1.0]], [0.0, 0.0])
    b = metrics.summarize([[0.5, 0.0], [0.5, 0.5]], [0.0, 0.0])
    m = metrics.across_clients([a, b])
    assert m["average_accuracy"] == pytest.approx((0.75 + 0.5) / 2)
    assert m["average_forgetting"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["accuracy_matrix"] == [[0.75, 0.0], [0.5, 0.75]]
    assert m["clients"] == 2


def test_non_square_matrix_is_refused():
    with pytest.raises(ValueError, match="square"):
        metrics.average_accuracy([[0.1, 0.2]])


def test_forgetting_curve_after_each_task():
    # after task 1: task 0 went 0.9 -> 0.6 ; after task 2: (0.9-0.3 + 0.8-0.5)/2
    assert metrics.forgetting_curve(R) == pytest.approx([None, 0.3, 0.45])
    assert metrics.forgetting_curve(R)[-1] == metrics.average_forgetting(R)
