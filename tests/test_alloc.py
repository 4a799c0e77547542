import torch

from blocklab._alloc import empty_like_layout


def test_contiguous_stays_contiguous():
    x = torch.randn(2, 3, 4, 5, dtype=torch.bfloat16)
    y = empty_like_layout(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()


def test_memory_order_matches_torchs_elementwise_ops():
    x = torch.randn(2, 5, 3, 4).transpose(1, 2)  # (B, H, T, D) view of (B, T, H, D)
    y = empty_like_layout(x)
    assert y.shape == x.shape
    assert y.stride() == (x * 1).stride() == (60, 4, 12, 1)


def test_gapped_input_gives_a_dense_result_in_its_order():
    fused = torch.randn(2, 5, 6, 4)  # q | k | v heads of a fused projection
    q = fused[:, :, :3].transpose(1, 2)  # (2, 3, 5, 4), with gaps
    y = empty_like_layout(q)
    assert y.stride() == (60, 4, 12, 1)
    assert y.untyped_storage().nbytes() == q.numel() * q.element_size()


def test_row_spans_cover_the_rows_in_per_thread_sized_blocks(monkeypatch):
    from blocklab._alloc import row_spans, rows_per_block

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert rows_per_block(10, 64) == 12  # 2 threads x 64 elements / 10 per row
    assert rows_per_block(1000, 64) == 1  # a row longer than a block is one block
    spans = row_spans(30, 10, 64)
    assert spans == [(0, 12), (12, 24), (24, 30)]
    assert row_spans(0, 10, 64) == []
