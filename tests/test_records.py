"""The typed readers of records.py: bounds, types, ranges and finiteness, in process."""
import json
import os

import pytest
import torch

import scaleshift
from scaleshift import records
from scaleshift.adapter_files import adapter_tensors, read_adapter_config, read_adapter_record
from scaleshift.errors import ScaleshiftError
from scaleshift.models import MAX_PARAMETERS, check_model_kwargs

from conftest import make_model


@pytest.fixture
def adapter_dir(tmp_path):
    model = scaleshift.apply(make_model("vit"), "ssf", layers=1)
    return scaleshift.save_adapter(model, tmp_path / "a", class_names=list("abcde"))


def edit_record(directory, **changes):
    path = directory / "adapter_config.json"
    raw = json.loads(path.read_text())
    raw["scaleshift"].update(changes)
    path.write_text(json.dumps(raw))


def test_the_record_of_a_saved_adapter_reads_back_typed(adapter_dir):
    record = read_adapter_record(adapter_dir)
    assert isinstance(record, records.AdapterRecord)
    assert record.method == "ssf" and record.num_classes == 5 and record.class_names == tuple("abcde")
    assert record.eval_transform["input_size"] == [3, 32, 32]
    with pytest.raises(AttributeError):
        record.num_classes = 6                      # frozen
    meta, state = adapter_tensors(adapter_dir)
    assert meta == read_adapter_config(adapter_dir) == record.as_meta() and state


@pytest.mark.parametrize("changes, message", [
    (dict(class_names=["a"]), "class_names must be 5 strings"),
    (dict(class_names=[1, 2, 3, 4, 5]), "class_names must be 5 strings"),
    (dict(num_classes=10**30), "num_classes must be an integer"),
    (dict(num_classes=True), "num_classes must be an integer"),
    (dict(method="nosuch"), "method 'nosuch'"),
    (dict(options=[1]), "options must be a mapping"),
    (dict(weights_sha256="abc"), "weights_sha256 must be a sha256"),
    (dict(eval_transform=dict(input_size=[3, 0, 32], mean=[0.5] * 3, std=[0.5] * 3)), "input_size"),
    (dict(eval_transform=dict(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5, 0, 0.5])), "std"),
    (dict(eval_transform=dict(input_size=[3, 32, 32], mean=[1e300] * 3, std=[0.5] * 3)), "mean"),
    (dict(eval_transform=dict(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3, x=1)), "unknown keys"),
    (dict(eval_transform=dict(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3,
                              interpolation="evil")), "interpolation"),
])
def test_a_bad_field_is_named(adapter_dir, changes, message):
    edit_record(adapter_dir, **changes)
    with pytest.raises(ScaleshiftError, match=message):
        read_adapter_record(adapter_dir)


@pytest.mark.parametrize("key, value, message", [
    ("depth", -1, "do not build"), ("depth", 10**6, "out of range"), ("foo", 1, "foo is not an argument"),
    ("img_size", "abc", "do not build"), ("embed_dim", float("nan"), "NaN is not a number JSON"),
    ("embed_dim", {"a": 1}, "must be a number"),
])
def test_base_model_kwargs_are_checked_when_read(adapter_dir, key, value, message):
    raw = json.loads((adapter_dir / "adapter_config.json").read_text())
    raw["scaleshift"]["base_model"]["kwargs"][key] = value
    (adapter_dir / "adapter_config.json").write_text(json.dumps(raw))
    with pytest.raises(ScaleshiftError, match=message):
        read_adapter_record(adapter_dir)


def test_model_kwargs_past_the_parameter_bound_are_refused_on_the_meta_device():
    with pytest.raises(ScaleshiftError, match="parameters"):
        check_model_kwargs("vit_tiny_patch16_224", 10, dict(embed_dim=1 << 20, num_heads=1))
    check_model_kwargs("vit_tiny_patch16_224", 10, dict(img_size=32, depth=2))   # a sane one passes
    assert MAX_PARAMETERS >= 1e9     # ViT-g fits


def test_json_depth_and_size_are_bounded_before_parsing(tmp_path, monkeypatch):
    assert records.json_depth('{"a": [[1], "[[[[" ], "b": {}}') == 3
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 10_000 + "]" * 10_000)
    with pytest.raises(ScaleshiftError, match="nests deeper"):
        records.read_json(deep)
    monkeypatch.setattr(records, "MAX_FILE_BYTES", 10)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"a": "x" * 20}))
    with pytest.raises(ScaleshiftError, match="bytes"):
        records.read_json(big, "adapter config")


def test_only_regular_files_are_read(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name in ("fifo", "dir"):     # a fifo would block the reader forever
        with pytest.raises(ScaleshiftError, match="not a regular file"):
            records.read_json(tmp_path / name)
    with pytest.raises(ScaleshiftError, match="not found"):
        records.read_json(tmp_path / "missing.json")


def test_nan_and_infinity_are_not_json(tmp_path):
    for text in ('{"a": NaN}', '{"a": -Infinity}'):
        (tmp_path / "f.json").write_text(text)
        with pytest.raises(ScaleshiftError, match="not a number JSON allows"):
            records.read_json(tmp_path / "f.json")


def test_yaml_aliases_are_bounded_before_expansion():
    few = "a: &x [1, 2]\nb: *x\n"
    assert records.read_yaml(few, "r") == {"a": [1, 2], "b": [1, 2]}
    bomb = "a0: &a0 [1, 1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 80))
    with pytest.raises(ScaleshiftError, match="YAML aliases"):
        records.read_yaml(bomb, "recipe r.yaml")
    few_but_wide = "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}, *a{i - 1}]\n" for i in range(1, 8))          # 70 aliases, 1e8 values
    with pytest.raises(ScaleshiftError, match="expands to"):
        records.read_yaml(few_but_wide, "recipe r.yaml")


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_tensors_refuses_a_pickle_without_running_it_and_names_a_truncated_file(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ScaleshiftError, match="holds Python objects, not tensors"):
        records.load_tensors(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"x": torch.ones(3)}, tmp_path / "ok.pt")
    assert torch.equal(records.load_tensors(tmp_path / "ok.pt")["x"], torch.ones(3))
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ScaleshiftError, match="truncated or not a PyTorch checkpoint"):
        records.load_tensors(tmp_path / "cut.pt")


def test_create_model_bounds_seed_and_num_classes():
    with pytest.raises(ScaleshiftError, match="seed must be an integer"):
        scaleshift.create_model("vit_tiny_patch16_224", 3, seed=10**23, img_size=32, depth=1)
    with pytest.raises(ScaleshiftError, match="num_classes must be an integer"):
        scaleshift.create_model("vit_tiny_patch16_224", 10**30)


def test_serving_reads_each_adapter_file_once(tmp_path, monkeypatch):
    from scaleshift.artifacts import load_artifact
    from scaleshift.multitask import MultiTaskModel
    from conftest import TINY
    model = scaleshift.create_model(TINY["vit"][0], num_classes=5, seed=0, **TINY["vit"][1])
    adapter_dir = scaleshift.save_adapter(scaleshift.apply(model, "ssf", layers=1), tmp_path / "a")
    reads = []
    original = records.read_json
    monkeypatch.setattr(records, "read_json", lambda path, what="file": reads.append(path) or original(path, what))
    monkeypatch.setattr("scaleshift.adapter_files.read_json", records.read_json)
    load_artifact(adapter_dir)
    assert reads == [adapter_dir / "adapter_config.json"]
    reads.clear()
    model = MultiTaskModel.from_adapters([adapter_dir, adapter_dir])
    assert reads == [adapter_dir / "adapter_config.json"] * 2 and len(model.records) == 2


def test_identity_is_frozen_reads_as_a_mapping_and_is_checked_when_read():
    from scaleshift.identity import Identity, identity_of
    identity = identity_of(make_model("vit"))
    assert isinstance(identity, Identity) and identity["architecture"] == "vit_tiny_patch16_224"
    assert Identity.from_dict(json.loads(json.dumps(identity.as_dict()))) == identity
    with pytest.raises(AttributeError):
        identity.seed = 1
    for bad, message in ((dict(identity.as_dict(), source="evil"), "source must be one of"),
                         (dict(identity.as_dict(), seed=-1), "seed must be an integer"),
                         (dict(identity.as_dict(), kwargs=[1]), "kwargs must be a mapping")):
        with pytest.raises(ScaleshiftError, match=message):
            Identity.from_dict(bad)
