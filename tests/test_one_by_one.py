"""The method: FM guidance of the small models (SMCF) and one-by-one distillation (OBOD)."""

import pytest

import fclkit
from fclkit.messages import Download, RoundInfo, Upload


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return fclkit.ExperimentConfig(cl="naive", clients=2, tasks=2, rounds=2, epochs=2,
                                   threads=1, output=str(tmp_path_factory.mktemp("runs")))


def _small(result, cid):
    return result.metrics["per_client"][str(cid)]["small"]["accuracy_matrix"]


def test_method_run_evaluates_small_personalised_and_global_models(base):
    result = fclkit.run(base, write_results=False)
    assert result.metrics["models"] == ["small", "fm", "fm_global"]
    fm = result.summary("fm")
    assert fm["accuracy_matrix"][0][0] > 0.6  # the FM learnt task 1 from the small models
    assert result.config.fm == "efficientnet-lite"  # 'auto' resolved for digits


def test_guidance_weight_zero_turns_guidance_off(base):
    """Without guidance, one-by-one sends the small models nothing: they train alone."""
    off = fclkit.run(base.evolve(fusion_options={"guidance_weight": 0.0}),
                     write_results=False)
    alone = fclkit.run(base.evolve(fusion="isolated"), write_results=False)
    on = fclkit.run(base, write_results=False)
    for cid in (0, 1):
        assert _small(off, cid) == _small(alone, cid)
    assert any(_small(on, cid) != _small(alone, cid) for cid in (0, 1))


def test_heterogeneous_small_models_are_fused(base):
    result = fclkit.run(base.evolve(client_models="mlp,cnn"), write_results=False)
    assert result.metrics["architectures"] == {"0": "mlp", "1": "cnn"}
    assert result.summary("fm")["accuracy_matrix"][0][0] > 0.6


def _fusion(base, **options):
    """A one-by-one fusion set up as a run would set it up."""
    from fclkit.plugins import build_registry
    from fclkit.runtime.experiment import Experiment

    exp = Experiment(base.evolve(fusion_options=options), build_registry())
    exp.prepare()
    return exp, exp.server.fusion


def _uploads(exp):
    import torch

    out = []
    for cid in (0, 1):
        model = exp.build_small_model("mlp")
        torch.manual_seed(cid)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))  # two different teachers
        out.append(Upload(client_id=cid, architecture="mlp", classes_seen=(0, 1, 2),
                          num_examples=10, small_state=model.state_dict()))
    return out


def test_personalised_parts_differ_and_carry_their_classes(base):
    exp, fusion = _fusion(base, epochs=2)
    result = fusion.fuse(RoundInfo(0, 0, 1), _uploads(exp), [])
    d0, d1 = result.downloads[0], result.downloads[1]
    assert isinstance(d0, Download) and d0.fm_classes == (0, 1, 2)
    assert any((d0.fm_state[k] != d1.fm_state[k]).any() for k in d0.fm_state)
    assert result.global_fm_state is not None


def test_personalise_false_sends_everyone_the_global_part(base):
    exp, fusion = _fusion(base, epochs=2, personalise=False)
    result = fusion.fuse(RoundInfo(0, 0, 1), _uploads(exp), [])
    for k in result.downloads[0].fm_state:
        assert (result.downloads[0].fm_state[k] == result.global_fm_state[k]).all()


@pytest.mark.parametrize("order,expected", [
    ("others-first", [1, 2, 0]), ("own-first", [0, 1, 2]), ("by-id", [0, 1, 2])])
def test_teacher_order(base, order, expected):
    exp, fusion = _fusion(base, order=order)
    assert fusion._order(0, [0, 1, 2], RoundInfo(0, 0, 1)) == expected


def test_fm_only_ignores_private_models(base):
    result = fclkit.run(base.evolve(fusion="fm-only", public_labels=5), write_results=False)
    alone = fclkit.run(base.evolve(fusion="isolated"), write_results=False)
    assert _small(result, 0) == _small(alone, 0)  # no guidance reaches the clients
    assert result.summary("fm")["average_accuracy"] > 0.5


def test_fm_only_without_server_labels_says_how_to_give_it_some(base):
    with pytest.raises(fclkit.ConfigError, match="public_labels") as err:
        fclkit.run(base.evolve(fusion="fm-only"), write_results=False)
    assert "--public-labels" in err.value.hint


@pytest.mark.parametrize("budget,expected", [(0, 0), (3, 3), (1000, None)])
def test_the_fusion_sees_only_the_servers_label_budget(base, budget, expected):
    """The benchmark knows every public label; the fusion gets `public_labels` per class."""
    import torch

    exp, fusion = _fusion(base.evolve(public_labels=budget))
    full = exp.stream.public.y
    seen = fusion.context.public
    assert torch.equal(seen.x, exp.stream.public.x)  # every input, labelled or not
    counts = torch.bincount(seen.labelled_y, minlength=10)
    if expected is None:  # more than the set has: every example labelled
        assert torch.equal(seen.y, full)
    else:
        assert len(seen.labelled_index) == expected * 10
        assert all(int(c) == expected for c in counts)
        assert torch.equal(seen.labelled_y, full[seen.labelled_index])  # true labels
        if expected:
            assert int((seen.y == -1).sum()) == len(full) - expected * 10


def test_label_weight_zero_gives_the_unlabelled_run(base):
    """The labels reach one-by-one through the label term and through the teachers'
    recalled classes ('auto'); with both off, the run is the unlabelled one."""
    unlabelled = fclkit.run(base, write_results=False)
    zero = fclkit.run(base.evolve(public_labels=5, fusion_options={
        "label_weight": 0.0, "teacher_classes": "seen"}), write_results=False)
    with_labels = fclkit.run(base.evolve(public_labels=5), write_results=False)
    assert zero.summary("fm") == unlabelled.summary("fm")
    assert with_labels.summary("fm") != unlabelled.summary("fm")


def test_fm_predicts_only_the_classes_it_was_fused_on(base):
    """An FM head's columns of classes no teacher has taught yet are untrained: after the
    first task the personalised and the global FM score exactly 0 on the second task."""
    for fusion, extra in (("one-by-one", {}), ("fm-only", {"public_labels": 5})):
        result = fclkit.run(base.evolve(fusion=fusion, **extra), write_results=False)
        for model in ("fm", "fm_global"):
            matrix = result.summary(model)["accuracy_matrix"]
            assert matrix[0][1] == 0.0, (fusion, model)
            assert matrix[0][0] > 0.6, (fusion, model)


@pytest.mark.parametrize("mode,expected", [("seen", [0, 1, 2, 3]), ("task", [2, 3])])
def test_teacher_classes_option(base, mode, expected):
    exp, fusion = _fusion(base, teacher_classes=mode)
    upload = Upload(client_id=0, architecture="mlp", classes_seen=(0, 1, 2, 3),
                    num_examples=5, small_state={}, metadata={"task_classes": [2, 3]})
    assert fusion._classes_of(upload, None) == expected  # neither mode reads the logits


def test_labelled_among_gives_the_rows_and_head_columns_of_the_chosen_classes():
    import torch

    from fclkit.stream import PublicSet

    public = PublicSet(x=torch.arange(6.0), y=torch.tensor([3, -1, 5, 3, 7, -1]))
    rows, target = public.labelled_among([5, 3])
    assert rows.tolist() == [0, 2, 3]  # unlabelled (-1) and other classes left out
    assert target.tolist() == [1, 0, 1]  # position of the label in [5, 3]


def _guidance(base, **options):
    """Client 0's guidance term with an FM part that knows classes 0 and 1, on 8 of its
    examples: (term, x, the FM's predictions among 0 and 1, a uniform small model's
    logits, the KD loss the term gives where every example is guided)."""
    import torch

    from fclkit.messages import RoundInfo
    from fclkit_builtins.one_by_one.distillation import kd_loss

    exp, _ = _fusion(base, **options)
    client = exp.build_client(0)
    fm = exp.foundation_model
    client.fm_state, client.fm_classes = fm.trainable_state(), [0, 1]
    x = exp.stream.clients[0].tasks[0].x_train[:8]
    with torch.no_grad():
        teacher = fm.forward(x)
    (term,) = client.method.extra_losses(client.round(RoundInfo(0, 0, 1)))
    small = torch.zeros(8, exp.stream.num_classes, requires_grad=True)
    every = kd_loss(small, teacher, client.method.options.guidance_temperature,
                    torch.tensor([0, 1]))
    return term, x, teacher[:, :2].argmax(1), small, every.item()


@pytest.mark.parametrize("mode", ["fm-correct", "fm-better"])
def test_guidance_examples_skip_where_the_label_says_the_fm_is_worse(base, mode):
    """'fm-correct' drops examples of known classes the FM gets wrong; 'fm-better' also
    those where the small model already gives the true class more probability. Examples
    of classes the FM does not know are guided in every mode."""
    import torch

    term, x, fm_pred, small, exact = _guidance(base, guidance_examples=mode)
    # labels contradicting the FM everywhere: nothing is guided
    wrong = 1 - fm_pred
    assert term(x, wrong, small).item() == 0.0
    # labels the FM gets right: guided like 'all' (small model is uniform, so FM is better)
    assert term(x, fm_pred, small).item() == pytest.approx(exact)
    # a class the FM does not know yet (5): guided, as in 'all'
    unknown = torch.full((8,), 5)
    assert term(x, unknown, small).item() == pytest.approx(exact)
    if mode == "fm-better":  # the small model already sure of the (FM-correct) label
        sure = torch.zeros(8, small.shape[1])
        sure[torch.arange(8), fm_pred] = 20.0
        assert term(x, fm_pred, sure).item() == 0.0


@pytest.mark.parametrize("mode", ["all", "fm-correct", "fm-better"])
def test_guidance_unknown_classes_false_guides_only_classes_the_fm_knows(base, mode):
    import torch

    term, x, fm_pred, small, exact = _guidance(base, guidance_examples=mode,
                                               guidance_unknown_classes=False)
    assert term(x, torch.full((8,), 5), small).item() == 0.0  # class 5: not guided
    assert term(x, fm_pred, small).item() == pytest.approx(exact)  # known: guided
    half = fm_pred.clone()
    half[:4] = 5  # half unknown: those weigh 0 in the batch mean
    assert 0 < term(x, half, small).item() < exact


def test_min_confidence_combines_with_the_servers_labels(base):
    """Both drop distillation rows: the confidence filter must index the rows that are
    left after the labelled ones are taken out (it once raised a shape error here)."""
    labelled = base.evolve(public_labels=5)
    exp, fusion = _fusion(labelled, epochs=1, min_confidence=0.9)
    filtered = fusion.fuse(RoundInfo(0, 0, 1), _uploads(exp), [])
    exp, fusion = _fusion(labelled, epochs=1)
    plain = fusion.fuse(RoundInfo(0, 0, 1), _uploads(exp), [])
    assert any((filtered.global_fm_state[k] != plain.global_fm_state[k]).any()
               for k in plain.global_fm_state)


def test_teacher_trust_is_the_precision_of_the_predicted_class_on_server_labels(base):
    import torch

    exp, fusion = _fusion(base.evolve(public_labels=5), teacher_trust="labels")
    public = exp.server.fusion.context.public
    rows, target = public.labelled_among([0, 1, 2])
    n_public, k = len(public.x), 3
    right = torch.full((n_public, 10), -9.0)  # a teacher right on every labelled row
    right[rows, target] = 9.0
    wrong = torch.full((n_public, 10), -9.0)  # ... and one wrong on every labelled row
    wrong[rows, (target + 1) % k] = 9.0
    per_class = torch.bincount(target, minlength=k).float()
    trust_right = fusion._trust(right, [0, 1, 2])[rows]
    trust_wrong = fusion._trust(wrong, [0, 1, 2])[rows]
    assert torch.allclose(trust_right, ((per_class + 1) / (per_class + 2))[target])
    assert torch.allclose(trust_wrong, (1 / (per_class + 2))[(target + 1) % k])
    off, _ = _fusion(base.evolve(public_labels=5))
    assert off.server.fusion._trust(right, [0, 1, 2]) is None  # default: full trust


def test_kd_all_anchor_keeps_earlier_teachers_on_shared_classes(base):
    """With two teachers of the same classes, 'kd' lets the second overwrite the first;
    'kd-all' also distils the FM as the first left it, so the result differs."""
    results = {}
    for anchor in ("kd", "kd-all"):
        exp, fusion = _fusion(base, epochs=2, anchor=anchor)
        uploads = _uploads(exp)
        fusion.fuse(RoundInfo(0, 0, 1), uploads, [])  # the FM now knows classes 0-2
        results[anchor] = fusion.fuse(RoundInfo(0, 1, 1), uploads, []).global_fm_state
    assert any((results["kd"][k] != results["kd-all"][k]).any() for k in results["kd"])


def test_recalled_teacher_classes_drop_the_older_classes_a_teacher_forgot(base):
    """'recalled' distils a teacher on its task's classes and on the older classes it
    still classifies on the server's labelled examples; 'auto' is it when labels exist."""
    import torch

    exp, fusion = _fusion(base.evolve(public_labels=5))
    assert fusion.options.teacher_classes == "auto"
    public = exp.server.fusion.context.public
    seen = [0, 1, 2, 3]
    rows, target = public.labelled_among(seen)
    logits = torch.full((len(public.x), 10), -9.0)
    logits[rows, torch.tensor(seen)[target]] = 9.0  # right on every labelled example ...
    forgot = rows[target == 1]
    logits[forgot, 3] = 20.0  # ... but class 1's: it says 3 (its current task) there
    upload = Upload(0, "mlp", tuple(seen), 1, {}, metadata={"task_classes": [2, 3]})
    assert fusion._classes_of(upload, logits) == [0, 2, 3]
    logits[forgot[:1], 1] = 30.0  # right on 1 of 5 examples: a recall of 0.2 keeps it
    assert fusion._classes_of(upload, logits) == [0, 1, 2, 3]
    _, strict = _fusion(base.evolve(public_labels=5), recall_threshold=0.5)
    assert strict._classes_of(upload, logits) == [0, 2, 3]
    _, unlabelled = _fusion(base)  # 'auto' without server labels: every seen class
    assert unlabelled._classes_of(upload, logits) == seen


def test_recalled_teacher_classes_need_server_labels(base):
    with pytest.raises(fclkit.ConfigError, match="holds no labels") as error:
        _fusion(base, teacher_classes="recalled")
    assert "--public-labels" in error.value.hint


# --------------------------------------------- batched one-by-one (fusion option batched)

def _hetero_uploads(exp, task):
    """Three clients, MLP and CNN teachers with different weights and classes: the
    lanes' class sets and teacher orders differ."""
    import torch

    out = []
    for cid in exp.server.fusion.context.client_ids:
        arch = ("mlp", "cnn")[cid % 2]
        model = exp.build_small_model(arch)
        gen = torch.Generator().manual_seed(100 + cid)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
        current = [0, 1] if task == 0 else [2, 3]
        if cid == task + 1:  # one client already has a class of the next task
            current.append(current[-1] + 1)
        seen = sorted({*range(current[0]), *current})
        out.append(Upload(client_id=cid, architecture=arch, classes_seen=tuple(seen),
                          num_examples=10, small_state=model.state_dict(),
                          metadata={"task_classes": current}))
    return out


def _both_paths(base, float64=False, **options):
    """The downloads of a fusion's second round (task 2, the anchor active) with
    batched = true and false, from the same start."""
    import attrs

    exp, fusion = _fusion(base, epochs=2, **options)
    fm = exp.foundation_model  # shared by the process's runs: restored below
    if float64:  # the head and its features in double: no rounding noise left
        fm.head.double()
        precompute = fm.precompute
        fm.precompute = lambda x: precompute(x).double()
    start = fusion.state_dict()
    results = []
    one_at_a_time = []  # the sequential path's calls
    sequential = fusion._distil
    fusion._distil = lambda *a, **k: one_at_a_time.append(1) or sequential(*a, **k)
    try:
        for batched in (True, False):
            fusion.options = attrs.evolve(fusion.options, batched=batched)
            fusion.load_state_dict(start)
            fusion.fuse(RoundInfo(0, 0, 1), _hetero_uploads(exp, 0), [])
            results.append(fusion.fuse(RoundInfo(1, 0, 1), _hetero_uploads(exp, 1), []))
            assert bool(one_at_a_time) is not batched  # each path ran as asked
    finally:
        if float64:
            fm.head.float()
            del fm.precompute
    return results


def _max_difference(a, b):
    assert a.global_fm_classes == b.global_fm_classes
    pairs = [(a.global_fm_state, b.global_fm_state)]
    for k, d in a.downloads.items():
        assert d.fm_classes == b.downloads[k].fm_classes
        pairs.append((d.fm_state, b.downloads[k].fm_state))
    assert all(set(x) == set(y) for x, y in pairs)
    return max(float((x[n] - y[n]).abs().max()) for x, y in pairs for n in x)


_BATCHED_CASES = {  # name: (config, fusion options, float32 tolerance)
    "kd": ({}, {}, 1e-5),
    "labels-recalled": ({"public_labels": 5}, {}, None),
    "kd-all-trust": ({"public_labels": 5}, {"anchor": "kd-all", "teacher_trust": "labels"},
                     None),
    "l2-ragged": ({}, {"anchor": "l2", "min_confidence": 0.5}, 1e-5),
    "none-task-random": ({}, {"anchor": "none", "teacher_classes": "task",
                              "order": "random"}, 1e-5),
    "all-labelled": ({"public_labels": 1000}, {"min_confidence": 0.5}, None),
    "distil-labelled": ({"public_labels": 3}, {"distil_labelled": True, "order": "own-first",
                                               "label_weight": 2.0, "batch_size": 50}, None),
    "mlp-head": ({"fm_options": {"head": "mlp"}}, {"anchor": "kd-all",
                                                   "min_confidence": 0.3}, None),
    "mlp-head-labels": ({"fm_options": {"head": "mlp"}, "public_labels": 5}, {}, None),
    "not-personalised": ({}, {"personalise": False}, 1e-5),
}


@pytest.mark.parametrize("case", list(_BATCHED_CASES))
def test_batched_distillation_equals_the_sequential_one(base, case):
    """Every FM part of a round distilled at once gives what one at a time gives, with
    heterogeneous teachers, lanes of different class sets and teacher orders, every
    anchor, server labels, ragged lanes (min_confidence: teachers distilled on different
    rows): in float64 to 1e-7 (measured up to 1.3e-9: Adam's division by the root of its
    second moment amplifies rounding; a wrong batch or loss term differs by 1e-3 or more).
    In float32, to 1e-5 with the linear head and no server
    labels; with labels or the MLP head, float32 rounding noise alone moves the result
    by up to ten Adam steps (lr 1e-3: the sequential path at 2 threads differs from
    itself at 1 thread by 1e-3 with labels, 1e-2 with the MLP head), so only float64
    can tell."""
    config, options, tolerance = _BATCHED_CASES[case]
    config = base.evolve(clients=3, client_models="mlp,cnn", **config)
    batched, sequential = _both_paths(config, float64=True, **options)
    assert _max_difference(batched, sequential) <= 1e-7
    assert batched.global_fm_classes == (0, 1, 2, 3, 4)
    if tolerance is not None:
        batched, sequential = _both_paths(config, **options)
        assert _max_difference(batched, sequential) <= tolerance


def test_batched_falls_back_to_one_at_a_time_where_the_head_cannot_be_stacked(base):
    """LoRA adapters (trainable state beyond the head) or a head of other layers: the
    sequential path, whatever the option says."""
    from torch import nn

    from fclkit_builtins.one_by_one.batched import StackedHead

    exp, fusion = _fusion(base, epochs=1)
    assert fusion._stacked_head() is not None
    assert StackedHead.of(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))) is None
    assert StackedHead.of(nn.Sequential(nn.Linear(4, 3), nn.ReLU())) is None
    fm = exp.foundation_model  # shared by the process's runs: restored below
    head = fm.head
    fm.trainable_state = lambda: {**type(fm).trainable_state(fm), "adapter.lora_A": head.weight}
    try:
        assert fusion._stacked_head() is None
        del fm.trainable_state
        fm.head = nn.Sequential(nn.Linear(fm.feature_dim, 8), nn.Tanh(),
                                nn.Linear(8, exp.stream.num_classes))
        assert fusion._stacked_head() is None
        fusion.setup(fusion.context)  # FM parts of this head
        result = fusion.fuse(RoundInfo(0, 0, 1), _uploads(exp), [])  # one at a time
        assert set(result.downloads[0].fm_state) == {"head.0.weight", "head.0.bias",
                                                     "head.2.weight", "head.2.bias"}
    finally:
        fm.__dict__.pop("trainable_state", None)
        fm.head = head


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "plain-update"])
def test_stacked_adam_is_one_torch_adam_per_lane(fused, monkeypatch):
    """Per lane, StackedAdam takes torch.optim.Adam's steps; a lane left out of a step
    keeps its parameters, moments and step count; gradients of any strides. The same
    without torch's private fused kernel (a torch version that lacks it)."""
    import torch

    from fclkit_builtins.one_by_one.batched import StackedAdam

    monkeypatch.setattr(StackedAdam, "fused_kernel", fused)
    torch.manual_seed(0)
    stacked = torch.randn(3, 4, 5)
    lanes = [stacked[i].clone().requires_grad_(True) for i in range(3)]
    optimizers = [torch.optim.Adam([p], lr=1e-2) for p in lanes]
    adam = StackedAdam([stacked], lr=1e-2)
    for active in ([True] * 3, [True, False, True], [False, True, True], [True] * 3):
        grads = torch.randn(3, 5, 4).transpose(1, 2)  # not contiguous
        adam.step([grads], active)
        for i, (p, opt) in enumerate(zip(lanes, optimizers, strict=True)):
            if active[i]:
                p.grad = grads[i].clone()
                opt.step()
    for i, p in enumerate(lanes):
        assert torch.allclose(stacked[i], p.detach(), atol=1e-7, rtol=0)
