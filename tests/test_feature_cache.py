"""The content-addressed feature cache on its own (no model)."""

import torch

from fclkit.feature_cache import FeatureCache, row_keys


def doubling(calls):
    def compute(rows):
        calls.append(rows.clone())
        return rows.float().flatten(1) * 2
    return compute


def test_rows_are_keyed_by_content_dtype_and_shape():
    a = torch.arange(12).view(3, 4)
    keys = row_keys(a)
    assert len(set(keys)) == 3 and all(len(k) == 16 for k in keys)
    assert row_keys(a[[2, 0]]) == [keys[2], keys[0]]
    assert row_keys(a.float())[0] != keys[0]  # same numbers, other dtype
    assert row_keys(a.view(3, 2, 2))[0] != keys[0]  # same bytes, other shape


def test_only_new_rows_are_computed_and_duplicates_count_as_hits():
    calls = []
    cache = FeatureCache()
    x = torch.tensor([[1, 2], [3, 4], [1, 2]])
    out = cache.features(x, doubling(calls))
    assert torch.equal(out, x.float() * 2)
    assert len(calls) == 1 and calls[0].tolist() == [[1, 2], [3, 4]]
    assert cache.info()[:2] == (1, 2)  # in-batch repeat is a hit
    out = cache.features(torch.tensor([[3, 4], [5, 6]]), doubling(calls))
    assert out.tolist() == [[6.0, 8.0], [10.0, 12.0]]
    assert calls[1].tolist() == [[5, 6]]
    assert cache.info()[:4] == (2, 3, None, 3)


def test_lru_bound_and_off_switch():
    calls = []
    cache = FeatureCache(maxsize=2)
    for row in ([1], [2], [3]):
        cache.features(torch.tensor([row]), doubling(calls))
    assert len(cache) == 2
    cache.features(torch.tensor([[1]]), doubling(calls))  # evicted: computed again
    assert len(calls) == 4
    off = FeatureCache(enabled=False)
    off.features(torch.tensor([[1]]), doubling(calls))
    off.features(torch.tensor([[1]]), doubling(calls))
    assert len(calls) == 6 and off.info().currsize == 0 and not off.info().enabled
    assert cache.features(torch.zeros((0, 1)), doubling(calls)).shape[0] == 0
