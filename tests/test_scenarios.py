"""Scenarios: domain-incremental streams (rotated, permuted, a domain column), clients with
their own class orders, and label-quantity skew -- on real data, through real runs."""

from __future__ import annotations

import csv
import json
import random

import attrs
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fclkit
from fclkit import ConfigError, StreamSpec
from fclkit.cli import app
from fclkit.partition import permute_pixels, rotate_images
from fclkit.text import decode_texts
from fclkit_builtins.digits.benchmark import DigitsBenchmark
from fclkit_builtins.userdata.textfile import TextFileBenchmark

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
TINY = dict(benchmark="digits", fusion="fedavg", clients=2, tasks=2, rounds=1, epochs=1,
            threads=1, loggers=("none",), checkpoint=False)


def _spec(**changes):
    base = dict(num_clients=2, num_tasks=2, seed=0, partition="iid", dirichlet_alpha=0.5,
                public_fraction=0.1)
    return StreamSpec(**{**base, **changes})


def _digits(**changes):
    return DigitsBenchmark().build(_spec(**changes))


# ------------------------------------------------------------------ rotated / permuted


def test_rotation_is_a_real_counter_clockwise_rotation():
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(rotate_images(x, 90), torch.rot90(x, 1, dims=(2, 3)), atol=1e-6)
    assert torch.allclose(rotate_images(x, 180), torch.rot90(x, 2, dims=(2, 3)), atol=1e-6)
    assert torch.equal(rotate_images(x, 0), x)
    grey = (torch.rand(2, 1, 8, 8) * 255).to(torch.uint8)
    assert rotate_images(grey, 30).dtype == torch.uint8  # compact images stay compact


def test_rotated_digits_every_task_all_classes_and_task_2_is_task_1_rotated():
    stream = _digits(scenario="domain", num_tasks=3, rotation_angle=30.0)
    assert stream.scenario == "domain"
    assert stream.domains == ("rotated 0 deg", "rotated 30 deg", "rotated 60 deg")
    assert stream.task_classes == (tuple(range(10)),) * 3
    for client in stream.clients:
        for task in client.tasks:
            assert task.classes == tuple(range(10))
            assert sorted(set(task.y_train.tolist())) == list(range(10))
            assert sorted(set(task.y_test.tolist())) == list(range(10))
    t1, t2, t3 = stream.clients[0].tasks
    # the same test images, rotated by the task's angle
    assert torch.equal(t1.y_test, t2.y_test)
    assert not torch.allclose(t1.x_test, t2.x_test)
    assert torch.allclose(t2.x_test, rotate_images(t1.x_test, 30.0), atol=1e-6)
    assert torch.allclose(t3.x_test, rotate_images(t1.x_test, 60.0), atol=1e-6)
    # task 1 is the pool as it is: the class scenario's test images, unrotated
    plain = _digits()
    pool_test = torch.cat([t.x_test for t in plain.clients[0].tasks])
    assert {tuple(v.flatten().tolist()) for v in t1.x_test} == {
        tuple(v.flatten().tolist()) for v in pool_test}
    # every domain holds the whole training pool (less the public set), split among clients
    n_train = sum(t.num_train for c in plain.clients for t in c.tasks)
    assert sum(c.tasks[1].num_train for c in stream.clients) == n_train
    # the public set spans the domains: some of its images are rotated, some are not
    originals = {tuple(v.flatten().tolist()) for v in
                 torch.cat([t.x_train for c in plain.clients for t in c.tasks]
                           + [plain.public.x])}
    public = [tuple(v.flatten().tolist()) for v in stream.public.x]
    unrotated = sum(p in originals for p in public)
    assert 0 < unrotated < len(public)


def test_cli_runs_domain_incremental_rotated_digits(tmp_path):
    res = runner.invoke(app, ["run", "-q", "--scenario", "domain", "--benchmark", "digits",
                              "--fusion", "fedavg", "--clients", "2", "--tasks", "2",
                              "--rounds", "1", "--epochs", "1", "--threads", "1",
                              "--loggers", "none", "--output", str(tmp_path), "--name", "rot"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "rot" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["scenario"] == "domain"
    assert metrics["domains"] == ["rotated 0 deg", "rotated 45 deg"]
    assert metrics["task_classes"] == [list(range(10))] * 2
    R = metrics["per_client"]["0"]["small"]["accuracy_matrix"]
    assert len(R) == 2 and all(0.0 <= v <= 1.0 for row in R for v in row)
    # a digit learnt upright is recognised far better than chance
    assert R[0][0] > 0.5


def test_permuted_digits_one_fixed_pixel_permutation_per_task():
    stream = _digits(scenario="domain", domain_transform="permuted", num_tasks=3)
    assert stream.domains == ("unpermuted", "permutation 1", "permutation 2")
    t1, t2, t3 = stream.clients[1].tasks
    a, b, c = (t.x_test.flatten(1) for t in (t1, t2, t3))
    assert not torch.equal(a, b) and not torch.equal(b, c)
    # each pixel position of task 2 is one position of task 1, for every test image at once
    perm = []
    for q in range(a.shape[1]):
        same = torch.nonzero((b[:, q:q + 1] == a).all(dim=0)).flatten()
        assert len(same), f"pixel {q} of task 2 is no pixel of task 1"
        perm.append(int(same[0]))
    assert torch.equal(permute_pixels(t1.x_test, perm).flatten(1), b)
    assert sorted(set(t2.y_train.tolist())) == list(range(10))
    # task 1 is unpermuted: the images are the pool's own
    plain = _digits()
    pool = {tuple(v.flatten().tolist()) for v in torch.cat([t.x_test for t in
                                                            plain.clients[0].tasks])}
    assert all(tuple(v.tolist()) in pool for v in a)
    assert sum(tuple(v.tolist()) in pool for v in b) < len(b) // 2


def test_permuted_run_end_to_end():
    result = fclkit.run(fclkit.ExperimentConfig(scenario="domain", domain_transform="permuted",
                                                **TINY), write_results=False)
    assert result.metrics["domains"] == ["unpermuted", "permutation 1"]
    assert result.metrics["mean"]["small"]["accuracy_matrix"][1][1] > 0.3


# ------------------------------------------------------------------ a domain column


SOURCES = ("news", "chat", "forum")
WORDS = {"sport": "goal match team score player coach", "food": "bread cheese soup garlic"}


def _domain_csv(path, per=12):
    rng = random.Random(0)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sentence", "topic", "source"])
        writer.writeheader()
        for source in SOURCES:
            for topic, words in WORDS.items():
                for _ in range(per):
                    text = f"{source} " + " ".join(rng.choice(words.split()) for _ in range(5))
                    writer.writerow({"sentence": text, "topic": topic, "source": source})
    return path


def _text_options(path, **more):
    return dict(path=str(path), text_column="sentence", label_column="topic",
                domain_column="source", **more)


def test_a_domain_column_of_a_csv_makes_the_tasks(tmp_path):
    path = _domain_csv(tmp_path / "posts.csv")
    bench = TextFileBenchmark(TextFileBenchmark.Options(**_text_options(path)))
    stream = bench.build(_spec(scenario="domain", num_tasks=3))
    assert stream.domains == ("chat", "forum", "news")  # sorted
    for client in stream.clients:
        for t, task in enumerate(client.tasks):
            assert task.classes == (0, 1)
            texts = decode_texts(task.x_train) + decode_texts(task.x_test)
            assert texts and all(s.split()[0] == stream.domains[t] for s in texts)
    public = decode_texts(stream.public.x)
    assert {s.split()[0] for s in public} == set(SOURCES)  # the public set spans the domains
    # a chosen order (and subset) of the domains
    ordered = TextFileBenchmark(TextFileBenchmark.Options(
        **_text_options(path, domain_order="news,chat"))).build(
        _spec(scenario="domain", num_tasks=2))
    assert ordered.domains == ("news", "chat")
    assert {s.split()[0] for s in decode_texts(ordered.clients[0].tasks[0].x_test)} == {"news"}
    # as many tasks as domains, said in one line
    with pytest.raises(ConfigError, match=r"has 3 domains \(chat, forum, news\)") as info:
        bench.build(_spec(scenario="domain", num_tasks=5))
    assert info.value.hint.startswith("--tasks 3")
    with pytest.raises(ConfigError, match="no domain 'blog'"):
        TextFileBenchmark(TextFileBenchmark.Options(
            **_text_options(path, domain_order="news,blog"))).build(_spec(scenario="domain"))


def test_left_out_domains_that_take_a_class_with_them_are_refused(tmp_path):
    path = tmp_path / "skewed.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label", "site"])
        for i in range(10):
            writer.writerows([[f"a{i}", "sport", "one"], [f"b{i}", "food", "one"],
                              [f"c{i}", "music", "two"]])
    bench = TextFileBenchmark(TextFileBenchmark.Options(path=str(path), domain_column="site",
                                                        domain_order="one"))
    with pytest.raises(ConfigError, match="hold no example of class 'music'"):
        bench.build(_spec(scenario="domain", num_tasks=1))


def test_domain_column_run_end_to_end(tmp_path):
    path = _domain_csv(tmp_path / "posts.csv")
    config = fclkit.ExperimentConfig(
        **{**TINY, "benchmark": "text-file", "tasks": 3}, scenario="domain",
        client_models="text-bow", fm="none", benchmark_options=_text_options(path))
    result = fclkit.run(config, write_results=False)
    assert result.metrics["domains"] == ["chat", "forum", "news"]
    assert len(result.metrics["per_client"]["1"]["small"]["accuracy_matrix"]) == 3


def test_hf_dataset_domain_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": [], "label": [], "site": []}
    rng = random.Random(1)
    for site in ("b", "a"):
        for label, words in enumerate(WORDS.values()):
            for _ in range(10):
                rows["text"].append(f"{site} " + " ".join(rng.choice(words.split())
                                                          for _ in range(4)))
                rows["label"].append(label)
                rows["site"].append(site)
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    from fclkit_builtins.userdata.hf_dataset import HFDatasetBenchmark

    bench = HFDatasetBenchmark(HFDatasetBenchmark.Options(path=str(tmp_path / "ds"),
                                                          domain_column="site"))
    stream = bench.build(_spec(scenario="domain", num_tasks=2))
    assert stream.domains == ("a", "b")
    second = stream.clients[0].tasks[1]
    assert {s.split()[0] for s in decode_texts(second.x_test)} == {"b"}


def test_domain_scenario_needs_a_benchmark_that_can_make_domains(tmp_path):
    rows = [{"text": f"{w} {w}", "label": topic} for topic, words in WORDS.items()
            for w in words.split() for _ in range(3)]
    path = tmp_path / "plain.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    bench = TextFileBenchmark(TextFileBenchmark.Options(path=str(path)))
    with pytest.raises(ConfigError, match="cannot be rotated or permuted") as info:
        bench.build(_spec(scenario="domain"))
    assert "domain_column" in info.value.hint

    class ClassOnly(DigitsBenchmark):  # a benchmark that builds class tasks whatever it is asked
        name = "class-only-digits"

        def build(self, spec):
            return super().build(attrs.evolve(spec, scenario="class"))

    with pytest.raises(ConfigError, match="cannot make domain-incremental tasks"):
        fclkit.run(fclkit.ExperimentConfig(**{**TINY, "benchmark": "class-only-digits"},
                                           scenario="domain"),
                   components=[ClassOnly], write_results=False)


# ------------------------------------------------------------------ label-quantity skew


def test_quantity_skew_gives_each_client_exactly_k_classes_per_task():
    stream = _digits(partition="quantity", classes_per_client=2, num_clients=3)
    for t in range(2):
        held = []
        for client in stream.clients:
            task = client.tasks[t]
            labels = sorted(set(task.y_train.tolist()))
            assert len(labels) == 2 and tuple(labels) == task.classes
            assert set(labels) <= set(stream.task_classes[t])
            assert sorted(set(task.y_test.tolist())) == list(stream.task_classes[t])
            held.append(set(labels))
        # 3 clients x 2 classes cover the task's 5 classes, and clients differ
        assert set().union(*held) == set(stream.task_classes[t])
        assert len({frozenset(h) for h in held}) > 1
    # a class is split evenly among the clients that hold it
    task = [c.tasks[0] for c in stream.clients]
    for c in stream.task_classes[0]:
        counts = [int((t.y_train == c).sum()) for t in task if c in t.classes]
        assert max(counts) - min(counts) <= 1


def test_quantity_skew_run_and_its_limit(tmp_path):
    result = fclkit.run(fclkit.ExperimentConfig(**TINY, partition="quantity",
                                                classes_per_client=3), write_results=False)
    assert result.metrics["client_tasks"]["0"]["task_classes"][0] != \
        result.metrics["task_classes"][0]
    assert all(len(c) == 3 for c in result.metrics["client_tasks"]["1"]["task_classes"])
    with pytest.raises(ConfigError, match="classes_per_client.*task 1 has only 5 classes"):
        _digits(partition="quantity", classes_per_client=6)
    res = runner.invoke(app, ["run", "-q", "--partition", "quantity", "--classes-per-client",
                              "4", "--tasks", "5", "--output", str(tmp_path)])
    assert res.exit_code == 1
    assert "task 1 has only 2 classes" in " ".join(res.output.split())
    assert "Traceback" not in res.output


# ------------------------------------------------------------------ per-client class orders


def test_per_client_class_orders_differ_and_each_covers_every_class():
    stream = _digits(class_order="per-client", num_clients=3, num_tasks=5)
    orders = [c.class_order for c in stream.clients]
    assert len(set(orders)) == 3 and all(sorted(o) == list(range(10)) for o in orders)
    assert stream.class_order == () and stream.task_classes == ()
    for client in stream.clients:
        groups = [t.classes for t in client.tasks]
        assert groups == [tuple(sorted(client.class_order[2 * i:2 * i + 2])) for i in range(5)]
        for task in client.tasks:
            assert set(task.y_train.tolist()) == set(task.classes)
            assert set(task.y_test.tolist()) == set(task.classes)
    # each class's training examples are shared out among the clients, each example once
    plain = _digits(num_clients=3, num_tasks=5)
    for c in range(10):
        per_class = [int((t.y_train == c).sum()) for cl in stream.clients for t in cl.tasks]
        assert sum(per_class) == sum(int((t.y_train == c).sum()) for cl in plain.clients
                                     for t in cl.tasks)
        assert sum(n > 0 for n in per_class) == 3
    same_seed = _digits(class_order="per-client", num_clients=3, num_tasks=5)
    assert [c.class_order for c in same_seed.clients] == orders


def test_per_client_orders_run_with_one_by_one():
    config = fclkit.ExperimentConfig(**{**TINY, "fusion": "one-by-one"},
                                     class_order="per-client", fm_options={"image_size": 32})
    result = fclkit.run(config, write_results=False)
    m = result.metrics
    assert m["class_order"] is None and m["task_classes"] is None
    a, b = (m["client_tasks"][k]["task_classes"] for k in ("0", "1"))
    assert a != b
    assert set(m["models"]) == {"small", "fm", "fm_global"}
    for cid in ("0", "1"):
        for model in m["models"]:
            R = m["per_client"][cid][model]["accuracy_matrix"]
            assert len(R) == 2 and all(0.0 <= v <= 1.0 for row in R for v in row)
    # the personalised FMs know the classes every teacher has seen, not only the client's own
    assert m["per_client"]["0"]["fm"]["accuracy_matrix"][1][0] > 0.0


def test_per_client_orders_with_domain_scenario_are_refused():
    with pytest.raises(ConfigError, match="no class order to give each client"):
        fclkit.ExperimentConfig(scenario="domain", class_order="per-client")


def test_default_streams_are_unchanged_by_the_new_settings():
    """The default spec and one with every new field at its default give the same stream."""
    a = DigitsBenchmark().build(StreamSpec(num_clients=2, num_tasks=2, seed=3, partition="iid",
                                           dirichlet_alpha=0.5, public_fraction=0.1))
    b = _digits(seed=3, scenario="class", class_order="shared", classes_per_client=2)
    for ca, cb in zip(a.clients, b.clients, strict=True):
        for ta, tb in zip(ca.tasks, cb.tasks, strict=True):
            assert torch.equal(ta.x_train, tb.x_train) and ta.classes == tb.classes
    assert a.class_order == b.class_order and np.array_equal(a.public.x, b.public.x)

