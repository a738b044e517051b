"""The public-checkpoint converter: strict mapping, clear refusals.

Shapes come from the parity manifests; the values do not matter here, so the state dicts are
built with torch.empty (cheap) instead of make_weights.fill.
"""
import json

import pytest
import torch
from conftest import require_shared

from vos_models import build_method
from vos_models.methods.rgmp.convert import (DROPPED_PUBLIC_KEYS, PublicCheckpointError,
                                             convert_public_state_dict, load_public_checkpoint,
                                             to_public_state_dict)


def state_from_manifest(*parts):
    spec = json.loads(require_shared(*parts).read_text())
    return {name: torch.empty(shape, dtype=getattr(torch, dtype)) for name, shape, dtype in spec["keys"]}


@pytest.fixture(scope="module")
def public_state():
    return state_from_manifest("parity", "rgmp", "manifest.json")


def test_public_keys_map_one_to_one(public_state):
    assert all(k.startswith("module.") for k in public_state)
    converted = convert_public_state_dict(public_state)
    model = build_method("rgmp")
    own = model.state_dict()
    assert set(converted) == set(own)
    # Every public key lands somewhere except the decoder's unused side outputs.
    assert len(converted) == len(public_state) - len(DROPPED_PUBLIC_KEYS)
    assert converted["network.encoder.mean"] is public_state["module.Encoder.mean"]
    assert converted["network.encoder.backbone.conv1_extra.weight"] is public_state["module.Encoder.conv1_p.weight"]
    assert converted["network.encoder.backbone.layer4.2.conv3.weight"] is public_state["module.Encoder.res5.2.conv3.weight"]
    assert converted["network.decoder.refine2.merge_residual.conv2.bias"] is public_state["module.Decoder.RF2.convMM2.bias"]
    assert converted["network.decoder.predict.weight"] is public_state["module.Decoder.pred2.weight"]
    model.load_state_dict(converted, strict=True)


def test_inverse_mapping_gives_back_the_public_names(public_state):
    converted = convert_public_state_dict(public_state)
    back = to_public_state_dict(converted)
    assert set(back) == set(public_state) - {"module." + k for k in DROPPED_PUBLIC_KEYS}
    assert all(back[k] is public_state[k] for k in back)


def test_prefix_optional_and_old_checkpoints_without_bn_counters(public_state):
    bare = {k[len("module."):]: v for k, v in public_state.items() if not k.endswith("num_batches_tracked")}
    converted = convert_public_state_dict(bare)
    assert int(converted["network.encoder.backbone.bn1.num_batches_tracked"]) == 0


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("module.Decoder.RF3.convFS2.weight"), "1 missing keys: module.Decoder.RF3.convFS2.weight"),
    (lambda s: s.__setitem__("module.Decoder.extra.weight", torch.empty(1)), "1 unexpected keys: module.Decoder.extra.weight"),
    (lambda s: s.__setitem__("module.Encoder.conv1_p.weight", torch.empty(64, 2, 7, 7)),
     "1 misshaped keys: module.Encoder.conv1_p.weight (expected [64, 1, 7, 7], got [64, 2, 7, 7])"),
])
def test_damaged_state_dict_is_refused_naming_the_key(public_state, damage, message):
    state = dict(public_state)
    damage(state)
    with pytest.raises(PublicCheckpointError) as err:
        convert_public_state_dict(state)
    assert message in str(err.value)


def test_other_methods_checkpoint_is_refused():
    crvos = state_from_manifest("parity", "crvos", "manifest.json")
    with pytest.raises(PublicCheckpointError, match="not a public RGMP state dict|does not fit RGMP"):
        convert_public_state_dict(crvos)


def test_wrong_configuration_is_refused(public_state):
    with pytest.raises(PublicCheckpointError, match="does not fit RGMP.*backbone='resnet18'.*misshaped"):
        convert_public_state_dict(public_state, backbone="resnet18")


def test_non_state_dicts_are_refused():
    with pytest.raises(PublicCheckpointError, match="vos_models checkpoint"):
        convert_public_state_dict({"format": "vos_models.checkpoint", "state_dict": {}})
    with pytest.raises(PublicCheckpointError, match="not a tensor"):
        convert_public_state_dict({"module.Encoder.mean": [0.5]})
    with pytest.raises(PublicCheckpointError, match="no 'module.Encoder"):
        convert_public_state_dict({"conv.weight": torch.empty(1)})


def test_load_public_checkpoint_file(tmp_path):
    # A small, non-paper configuration keeps the file small; the mapping is the same.
    source = build_method("rgmp", backbone="resnet18", decoder_channels=32)
    public = to_public_state_dict(source.state_dict())
    public.update({"module." + key: torch.zeros(1) for key in DROPPED_PUBLIC_KEYS})
    path = tmp_path / "weights.pth"
    torch.save(public, path)
    loaded = load_public_checkpoint(path, backbone="resnet18", decoder_channels=32)
    assert loaded.name == "rgmp" and loaded.build_config == {"backbone": "resnet18", "decoder_channels": 32}
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError):
        load_public_checkpoint(tmp_path / "absent.pth")
