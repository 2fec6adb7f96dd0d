"""Fusion ``glfc``: GLFC, Global-Local Forgetting Compensation (Dong et al., "Federated
Class-Incremental Learning", CVPR 2022).

Server: FedAvg of the small models (the ``fedavg`` fusion, with its options) plus the
proxy server (:class:`~fclkit_builtins.glfc.proxy.ProxyServer`), which reconstructs each
task's prototypes from the clients' perturbed prototype gradients, scores every round's
global model on them and chooses, per task, the best one as the old model of the next
task's relation distillation. The downloads of a task's last round name that choice
(``metadata["glfc"]``: ``old_task``, ``old_round``, ``old_classes``, ``score``) and, when
it is an earlier round's model, carry its weights (``Download.payload``, counted in the
run's download bytes); otherwise the clients have it already, as the download's own
weights (:mod:`fclkit_builtins.glfc.client`).

Client: :class:`~fclkit_builtins.glfc.client.GLFCClient` -- the class-aware gradient
compensation loss and the class-semantic relation distillation loss, in place of the
strategy's cross-entropy, and the prototype gradients. The exemplar memory is the
strategy's: ``--cl replay`` (fclkit's default strategy) mixes memory examples of the old
classes into every mini-batch, which is what both losses weigh and distil on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from fclkit.config import boolean, float_in, int_at_least, non_negative, positive_float, setting
from fclkit.messages import Download, Failure, FusionResult, RoundInfo, Upload
from fclkit_builtins.fusion.fedavg import FedAvg

from .client import OLD_PREFIX, GLFCClient


class GLFC(FedAvg):
    name = "glfc"
    description = ("GLFC (Dong et al. 2022): FedAvg + gradient-compensated CE and relation "
                   "distillation from the old global model a proxy server picks from "
                   "prototype gradients (homogeneous architectures; use with --cl replay)")
    ClientSide = GLFCClient

    @attrs.frozen
    class Options(FedAvg.Options):
        gc_weight: float = setting(
            0.5, "clients: weight of the class-aware gradient compensation loss L_GC (the "
            "cross-entropy re-weighted by |p_y - 1| over its group's mean, old and new "
            "classes apart) from the second task on; the first task trains with plain "
            "cross-entropy (the authors' code: 0.5)", non_negative)
        rd_weight: float = setting(
            0.5, "clients: weight of the class-semantic relation distillation loss L_RD "
            "(KL to the old model's softmax over the old classes joined with the one-hot "
            "label over the new ones) from the second task on (the authors' code: 0.5; "
            "0: no distillation)", non_negative)
        temperature: float = setting(
            1.0, "clients: softmax temperature of the relation distillation (1: none, as in "
            "the paper)", positive_float)
        proxy: bool = setting(
            True, "server: choose the old model with the proxy server (the best-scoring "
            "global model of the previous task on prototypes reconstructed from the "
            "clients' gradients); false: the previous task's last global model, and clients "
            "send no prototype gradients", boolean)
        proto_steps: int = setting(
            50, "clients: gradient-descent steps that perturb each prototype example "
            "before its encoder gradient is taken (the authors' code: 50; 0: none)",
            int_at_least(0))
        proto_lr: float = setting(
            0.2, "clients: step size of the prototype perturbation (the authors' code: their "
            "learning rate 2.0 / 10)", positive_float)
        recon_steps: int = setting(
            250, "server: L-BFGS steps of the gradient inversion that reconstructs each "
            "prototype (the authors' code: 250; steps after convergence are not run)",
            int_at_least(1))
        recon_lr: float = setting(
            0.1, "server: L-BFGS learning rate of the gradient inversion (the authors' "
            "code: 0.1)", float_in(0.0, 10.0, low_open=True))
        recon_samples: int = setting(
            20, "server: the last iterates of each inversion kept as monitor examples "
            "(the authors' code: 20)", int_at_least(1))

    def setup(self, context: Any) -> None:
        super().setup(context)
        from .proxy import ProxyServer, require_continuous, tokens_refused

        o = self.options
        spec = getattr(context, "input_spec", None)
        if o.proxy and spec is not None and spec.modality == "text":
            raise tokens_refused("this benchmark's inputs are token ids")
        if o.proxy and context.public is not None and context.public.x is not None:
            require_continuous(context.public.x)
        self.proxy = ProxyServer(num_classes=context.num_classes, seed=context.seed,
                                 device=context.device, enabled=o.proxy, steps=o.recon_steps,
                                 lr=o.recon_lr, keep=o.recon_samples)
        #: classes the global model has been trained on (the clients' classes_seen)
        self.learned: list[int] = []
        self._models: dict[str, Any] = {}

    def _global_model(self, architecture: str, state: Mapping[str, Any]) -> Any:
        if architecture not in self._models:
            self._models[architecture] = self.context.build_small_model(architecture).to(
                self.context.device)
        model = self._models[architecture]
        model.load_state_dict(state)
        return model

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        result = super().fuse(round_info, uploads, failures)
        if not uploads:
            return result
        state = next(iter(result.downloads.values())).small_state
        proxy = self.proxy
        proxy.observe(round_info.task, round_info.round, uploads,
                      self._global_model(uploads[0].architecture, state))
        self.learned = sorted(set(self.learned).union(*(u.classes_seen for u in uploads)))
        metadata = dict(result.metadata)
        metadata["glfc"] = {"monitor_examples": 0 if proxy.monitor_y is None
                            else len(proxy.monitor_y), "inferred_labels": list(proxy.labels),
                            "score": proxy.best_score, "best_round": proxy.best_round}
        if not round_info.is_last_round:
            return FusionResult(downloads=result.downloads, metadata=metadata)
        # the task ends: its best global model is the next task's old model
        choice = {"old_task": round_info.task, "old_round": proxy.best_round,
                  "old_classes": list(self.learned), "score": proxy.best_score}
        extra: dict[str, Any] = {}
        if proxy.best_round != round_info.round and proxy.best_state is not None:
            extra = {OLD_PREFIX + k: v for k, v in proxy.best_state.items()}
        downloads = {cid: Download(small_state=d.small_state, fm_state=d.fm_state,
                                   fm_classes=d.fm_classes,
                                   metadata={**d.metadata, "glfc": choice}, payload=extra)
                     for cid, d in result.downloads.items()}
        return FusionResult(downloads=downloads, metadata=metadata)

    def state_dict(self) -> dict[str, Any]:
        return {"proxy": self.proxy.state_dict(), "learned": list(self.learned)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("proxy"):
            self.proxy.load_state_dict(state["proxy"])
        self.learned = [int(c) for c in state.get("learned", [])]
