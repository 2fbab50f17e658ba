"""QGAM computes the paper's two attention steps (Eq. 14-15), checked against a hand computation."""

import math

import pytest
import torch

from backend.models.operators import QueryGlobalAggregation

torch.set_num_threads(1)

TOKENS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # N = 3 tokens of width 2
QUERIES = [[2.0, 0.0], [0.0, -1.0]]  # M = 2 learnable queries


def softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    e = [math.exp(s - top) for s in scores]
    return [v / sum(e) for v in e]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def weighted(weights: list[float], rows: list[list[float]]) -> list[float]:
    return [sum(w * row[j] for w, row in zip(weights, rows)) for j in range(len(rows[0]))]


def identity_qgam() -> QueryGlobalAggregation:
    """Width 2, projections the identity: what is left is the attention itself."""
    qgam = QueryGlobalAggregation(channels=2, queries=2, dim=2)
    with torch.no_grad():
        qgam.queries.copy_(torch.tensor(QUERIES))
        for linear in (qgam.gather_q, qgam.gather_k, qgam.gather_v, qgam.spread_q, qgam.spread_k, qgam.spread_v,
                       qgam.to_out):
            linear.weight.copy_(torch.eye(2))
        qgam.to_out.bias.zero_()
    return qgam


def test_queries_gather_a_context_and_tokens_read_it_back_as_in_eq_14_and_15():
    scale = 1 / math.sqrt(2)
    # Eq. 14: each query attends over the N tokens (softmax across tokens): G = softmax(Q Xᵀ/√d) X.
    gather = [softmax([scale * dot(q, x) for x in TOKENS]) for q in QUERIES]
    context = [weighted(w, TOKENS) for w in gather]
    # Eq. 15: each token attends over the M context rows (softmax across G): out = softmax(X Gᵀ/√d) G.
    spread = [softmax([scale * dot(x, g) for g in context]) for x in TOKENS]
    expected = [weighted(w, context) for w in spread]

    with torch.no_grad():
        out, gather_map, spread_map = identity_qgam().attention_maps(torch.tensor([TOKENS]))
    assert gather_map.shape == (1, 2, 3) and spread_map.shape == (1, 3, 2)
    assert gather_map[0].tolist() == [pytest.approx(row, rel=1e-5) for row in gather]
    assert spread_map[0].tolist() == [pytest.approx(row, rel=1e-5) for row in spread]
    assert out[0].tolist() == [pytest.approx(row, rel=1e-5) for row in expected]
