"""The strict key check shared by the four public-checkpoint converters."""
import pytest
import torch

from vos_models.methods._convert_utils import (PublicCheckpointError, check_public_state_dict, listing, meta_model,
                                               state_shapes)

EXPECTED = {"a.weight": (2, 3), "a.bias": (2,), "bn.num_batches_tracked": ()}


def test_a_matching_state_dict_passes_and_optional_or_ignored_keys_are_allowed():
    state = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "bn.num_batches_tracked": torch.zeros((), dtype=torch.long)}
    check_public_state_dict(state, EXPECTED, what="x")
    del state["bn.num_batches_tracked"]
    check_public_state_dict(state, EXPECTED, what="x", optional=["bn.num_batches_tracked"])
    check_public_state_dict({**state, "unused.head": torch.zeros(1)}, EXPECTED, what="x",
                            optional=["bn.num_batches_tracked"], ignored=["unused.head"])
    with pytest.raises(PublicCheckpointError, match=r"1 misshaped keys: bn\.num_batches_tracked \(expected \[\], got \[1\]\)"):
        check_public_state_dict({**state, "bn.num_batches_tracked": torch.zeros(1)}, EXPECTED, what="x",
                                optional=["bn.num_batches_tracked"])


def test_every_problem_is_named_in_one_message():
    state = {"a.weight": torch.zeros(3, 2), "extra": torch.zeros(1), "bn.num_batches_tracked": "oops"}
    with pytest.raises(PublicCheckpointError) as err:
        check_public_state_dict(state, EXPECTED, what="not a public TEST state dict")
    assert str(err.value) == ("not a public TEST state dict: 1 missing keys: a.bias; 1 unexpected keys: extra; "
                              "2 misshaped keys: a.weight (expected [2, 3], got [3, 2]), "
                              "bn.num_batches_tracked (expected [], got a str)")
    assert isinstance(err.value, ValueError)


def test_listing_and_meta_shapes():
    assert listing([f"k{i}" for i in range(10)], limit=3) == "k0, k1, k2, ... (7 more)"
    model = meta_model(lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    assert next(model.parameters()).is_meta
    shapes = state_shapes(model)
    assert shapes["0.weight"] == (4, 3, 3, 3) and shapes["1.num_batches_tracked"] == ()
