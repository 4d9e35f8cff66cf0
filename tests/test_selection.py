"""AdaSPEC token selection: per-row KL against float64, and which rows are kept."""

from __future__ import annotations

import pytest
import torch
from reference_divergences import ref_divergence

from anydistill.losses.engine import Head, TeacherSignal
from anydistill.losses.selection import per_row_forward_kl, select_learnable


def test_per_row_forward_kl_matches_float64():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(37, 8, generator=g), torch.randn(37, 12, generator=g)
    ws, wt = torch.randn(45, 8, generator=g), torch.randn(50, 12, generator=g)
    got = per_row_forward_kl(hs, Head(ws, softcap=5.0), TeacherSignal(ht, Head(wt)), 41, chunk=5)
    zs = 5.0 * torch.tanh((hs.double() @ ws[:41].double().T) / 5.0)
    want = ref_divergence("fkl", zs, ht.double() @ wt[:41].double().T)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


def test_select_learnable_keeps_the_largest_gaps():
    draft = torch.tensor([1.0, 5.0, 2.0, 9.0, 0.5])
    ref = torch.tensor([0.9, 1.0, 1.9, 8.9, 0.1])  # gaps 0.1, 4.0, 0.1, 0.1, 0.4
    assert select_learnable(draft, ref, 0.4).tolist() == [False, True, False, False, True]
    assert select_learnable(draft, ref, 1.0).all()
    assert select_learnable(draft, ref, 0.01).sum() == 1
    with pytest.raises(ValueError, match="keep"):
        select_learnable(draft, ref, 0.0)
