"""The engine's small parts: n-gram drafts, per-row sampling, and the batch KV cache's row surgery."""

from __future__ import annotations

import torch

from models.local.kvcache import BatchKV, new_cache
from models.local.lookup import NgramIndex
from models.local.sampling import RowSampler, choose_tokens, make_generator


def test_ngram_index_proposes_the_continuation_of_the_longest_latest_match() -> None:
    index = NgramIndex([1, 2, 3, 4, 5, 9, 2, 3, 7, 8], max_ngram=3)
    index.append(2)
    index.append(3)
    # "2 3" last continued with 7 (its latest occurrence); no 3-gram "8 2 3" earlier.
    assert index.propose(3) == [7, 8, 2]
    index.append(4)  # "2 3 4" occurred at the start: the 3-gram wins over "3 4"/"4"
    assert index.propose(2) == [5, 9]
    assert index.propose(0) == []
    assert NgramIndex([1, 2, 3]).propose(4) == []


def test_ngram_proposal_is_cut_at_the_end_of_the_context() -> None:
    index = NgramIndex([5, 6, 5], max_ngram=2)
    assert index.propose(10) == [6, 5]


def test_greedy_rows_take_the_argmax_and_seeded_rows_repeat() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = RowSampler()
    first = choose_tokens(
        logits, [greedy, RowSampler(1.0, 0.9, make_generator(7)), RowSampler(0.7, 1.0, make_generator(3))]
    )
    again = choose_tokens(
        logits, [greedy, RowSampler(1.0, 0.9, make_generator(7)), RowSampler(0.7, 1.0, make_generator(3))]
    )
    assert first[0] == int(logits[0].argmax())
    assert first == again
    # A row's draws do not depend on its neighbours.
    alone = choose_tokens(logits[1:2], [RowSampler(1.0, 0.9, make_generator(7))])
    assert alone[0] == first[1]


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.tensor([[5.0, 4.9, -10.0, -10.0, -10.0]])
    samplers = [RowSampler(1.0, 0.5, make_generator(seed)) for seed in range(40)]
    picks = {choose_tokens(logits, [sampler])[0] for sampler in samplers}
    assert picks == {0}
    wide = {choose_tokens(logits, [RowSampler(1.0, 1.0, make_generator(seed))])[0] for seed in range(40)}
    assert wide == {0, 1}


def _filled(rows: int, columns: int, start: float) -> BatchKV:
    cache = new_cache()
    keys = torch.arange(rows * columns, dtype=torch.float32).reshape(rows, 1, columns, 1) + start
    cache.update(keys, -keys, 0)
    return BatchKV(cache, torch.ones((rows, columns), dtype=torch.bool))


def test_merge_left_pads_and_select_drops_rows() -> None:
    kv = _filled(1, 3, 0.0)
    kv.merge(_filled(2, 2, 100.0))
    assert kv.mask.tolist() == [[True, True, True], [False, True, True], [False, True, True]]
    layer = kv.cache.layers[0]
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 1, 2], [0, 100, 101], [0, 102, 103]]
    kv.select([2, 0])
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 102, 103], [0, 1, 2]]
    assert kv.cache.get_seq_length() == 3


def test_growing_layer_appends_in_place_and_truncates() -> None:
    kv = _filled(2, 3, 0.0)
    layer = kv.cache.layers[0]
    for step in range(100):  # well past the first capacity
        new = torch.full((2, 1, 1, 1), 1000.0 + step)
        layer.update(new, new)
        kv.commit(torch.ones((2, 1), dtype=torch.bool))
    assert layer.keys.shape == (2, 1, 103, 1)
    assert layer.keys[0, 0, -1, 0].item() == 1099.0
    kv.truncate(2)
    assert layer.keys.shape[-2] == kv.columns == 101
    assert kv.cache.get_seq_length() == 101


def test_compact_repacks_real_columns_to_the_right() -> None:
    kv = _filled(2, 4, 0.0)
    kv.mask = torch.tensor([[False, True, False, True], [True, True, True, False]])
    assert kv.waste() == 1
    kv.compact()
    assert kv.mask.tolist() == [[False, True, True], [True, True, True]]
    assert kv.cache.layers[0].keys[:, 0, :, 0].tolist()[0][1:] == [1, 3]
    assert kv.cache.layers[0].keys[:, 0, :, 0].tolist()[1] == [4, 5, 6]
    assert kv.cache.layers[0].values[:, 0, :, 0].tolist()[1] == [-4, -5, -6]
