import torch

from fedsim.aggregate import WeightedSum


def _uploads(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"delta": {"w": torch.randn(1000, generator=g)}} for _ in range(n)]


def test_weighted_mean_matches_formula():
    ups, weights = _uploads(3), [1.0, 2.0, 5.0]
    acc = WeightedSum()
    for u, w in zip(ups, weights):
        acc.add(u, {"delta": w})
    expected = sum(w * u["delta"]["w"] for u, w in zip(ups, weights)) / 8.0
    torch.testing.assert_close(acc.means()["delta"]["w"], expected)
    assert acc.count == 3


def test_partial_sums_merged_in_any_grouping_give_identical_bits():
    ups = _uploads(7)
    weights = [float(n) for n in (13, 70, 5, 44, 9, 120, 31)]
    whole = WeightedSum()
    for u, w in zip(ups, weights):
        whole.add(u, {"delta": w})
    for groups in ([3, 4], [2, 2, 3], [1] * 7):
        merged, start = WeightedSum(), 0
        for size in groups:
            part = WeightedSum()
            for u, w in zip(ups[start : start + size], weights[start : start + size]):
                part.add(u, {"delta": w})
            merged.merge(part)
            start += size
        assert torch.equal(merged.means()["delta"]["w"], whole.means()["delta"]["w"])


def test_fields_have_their_own_weights_and_zero_weight_fields_are_dropped():
    acc = WeightedSum()
    acc.add({"a": {"w": torch.ones(2)}, "b": {"w": torch.zeros(2)}}, {"a": 3.0, "b": 0.0})
    acc.add({"a": {"w": torch.zeros(2)}, "b": {"w": torch.zeros(2)}}, {"a": 1.0, "b": 0.0})
    means = acc.means()
    torch.testing.assert_close(means["a"]["w"], torch.full((2,), 0.75))
    assert "b" not in means
