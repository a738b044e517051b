"""The strictness every public-checkpoint converter must show, checked the same way for each
method: one missing key, one unexpected key and one misshaped key are each refused with a message
that names the key (and, for a shape, the expected and the received shape)."""
from __future__ import annotations

import re

import pytest
import torch


def assert_converter_is_strict(convert, public: dict, *, missing: str, misshaped: str, expected_shape: list[int],
                               error: type[Exception] = ValueError, **options) -> None:
    """convert(state_dict, **options) must refuse `public` with `missing` removed, with an extra
    key, and with `misshaped` replaced by a (3, 3) tensor."""
    broken = dict(public)
    del broken[missing]
    with pytest.raises(error, match="1 missing keys: " + re.escape(missing)):
        convert(broken, **options)
    extra = f"{missing.rsplit('.', 2)[0]}.extra_for_the_test.weight"
    with pytest.raises(error, match="1 unexpected keys: " + re.escape(extra)):
        convert({**public, extra: torch.zeros(1)}, **options)
    with pytest.raises(error, match=re.escape(f"misshaped keys: {misshaped} (expected {expected_shape}, got [3, 3])")):
        convert({**public, misshaped: torch.zeros(3, 3)}, **options)
