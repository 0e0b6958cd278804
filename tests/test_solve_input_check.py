"""The non-finite input check of do.solve (a row-sum prefilter, then entry by entry) is exact."""

import torch

from doubleopt._solve import _nonfinite_instances


def test_nonfinite_input_check_is_exact_including_overflowing_rows():
    big = torch.finfo(torch.float64).max
    x = torch.tensor(
        [[big, big, 1.0], [1.0, float("inf"), 2.0], [float("nan"), 0.0, 0.0], [1.0, 2.0, 3.0], [-big, -big, -big]],
        dtype=torch.float64,
    )
    y0 = torch.zeros(5, 2, dtype=torch.float64)
    want = ~torch.isfinite(x).all(-1)
    assert _nonfinite_instances(x, y0, 5).tolist() == want.tolist() == [False, True, True, False, False]
    x3 = x[:, None, :].expand(5, 4, 3).clone()
    x3[3, 2, 1] = float("-inf")
    assert _nonfinite_instances(x3, y0, 5).tolist() == [False, True, True, True, False]
