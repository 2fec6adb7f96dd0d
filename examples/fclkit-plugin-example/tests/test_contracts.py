"""The plugin's components keep fclkit's contracts (run: pytest)."""

from fclkit_plugin_example.fusion import FedAvgM
from fclkit_plugin_example.logger import JsonLinesLogger
from fclkit_plugin_example.model import LogisticRegression
from fclkit_plugin_example.strategy import L2Anchor

from fclkit.testing import check_client_model, check_fusion, check_logger, check_strategy


def test_l2_anchor():
    check_strategy(L2Anchor, {"strength": 0.5})


def test_logreg():
    check_client_model(LogisticRegression)


def test_fedavgm():
    check_fusion(FedAvgM)


def test_jsonl():
    check_logger(JsonLinesLogger)
