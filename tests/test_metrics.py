"""Full-ranking metrics against a numpy reference computed by sorting."""
import numpy as np
import pytest

from asif_tf import metrics


def numpy_ranks(users, items, targets):
    """Rank by a stable argsort in which ties are ordered before the target (pessimistic)."""
    scores = users @ items.T
    ranks = []
    for b, t in enumerate(targets):
        s = scores[b].astype(np.float64)
        candidates = [j for j in range(1, len(items)) if j != t]
        # Sort by descending score; among equal scores other items come first.
        order = sorted(candidates + [t], key=lambda j: (-s[j], j == t))
        ranks.append(order.index(t))
    return np.array(ranks)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_ranks_match_numpy_with_ties(chunk_size):
    rng = np.random.default_rng(0)
    # Integer-valued embeddings make exact ties frequent.
    users = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
    items = rng.integers(-2, 3, size=(53, 3)).astype(np.float32)
    targets = rng.integers(1, 53, size=40)
    got = metrics.full_ranking_ranks(users, items, targets, chunk_size=chunk_size).numpy()
    np.testing.assert_array_equal(got, numpy_ranks(users, items, targets))


def test_padding_item_never_ranks():
    users = np.ones((1, 2), np.float32)
    items = np.array([[100, 100], [1, 1], [2, 2]], np.float32)  # padding scores highest
    assert metrics.full_ranking_ranks(users, items, np.array([2])).numpy().tolist() == [0]


def test_streaming_metric_equals_numpy_means():
    rng = np.random.default_rng(1)
    ranks_a, ranks_b = rng.integers(0, 40, 30), rng.integers(0, 40, 17)
    m = metrics.RankingMetrics()
    m.update_state(ranks_a)
    m.update_state(ranks_b)
    result = {k: float(v) for k, v in m.result().items()}
    r = np.concatenate([ranks_a, ranks_b]).astype(np.float64)
    for k in (10, 20):
        assert result[f"hr@{k}"] == pytest.approx(np.mean(r < k), abs=1e-6)
        assert result[f"ndcg@{k}"] == pytest.approx(np.mean(np.where(r < k, 1 / np.log2(r + 2), 0)), abs=1e-6)
    assert result["mrr"] == pytest.approx(np.mean(1 / (r + 1)), abs=1e-6)
    m.reset_state()
    assert float(m.result()["hr@10"]) == 0.0
