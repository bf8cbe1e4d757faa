"""The VLA model: real transformers/peft backbones (tiny random-init configs), the action head, model folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from irevla_ros.core.data.codec import PayloadError
from irevla_ros.core.model.head import HeadConfig
from irevla_ros.core.model.processor import InputError
from irevla_ros.core.model.vla import (
    MANIFEST,
    ModelFolderError,
    VLAModel,
    file_sha256,
    folder_sha256,
    read_config,
)
from irevla_ros.core.model.weights import decode_head_weights, encode_head_weights

FAMILIES = ["tiny", "tiny-llava", "tiny-paligemma"]


def frames(cameras: int, batch: int = 2, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8) for _ in range(cameras)]


@pytest.fixture(scope="module")
def tiny2() -> VLAModel:
    return VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8})


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("cameras", [1, 2])
def test_features_and_actions_shapes_finite(preset, cameras):
    model = VLAModel.from_preset(preset, num_cameras=cameras, head={"proprio_dim": 8})
    feats = model.encode(frames(cameras), ["pick up the red cube", "open the drawer"])
    t, d = model.feature_shape
    assert feats.shape == (2, t, d)
    assert t == cameras * model.config.tokens_per_image + model.config.max_text_tokens
    assert torch.isfinite(feats).all()
    out = model.act(frames(cameras), ["a", "b"], np.zeros((2, 8), np.float32))
    assert out.features.shape == (2, t, d) and out.features.dtype == np.float16
    assert out.action.shape == (2, 7) and np.isfinite(out.action).all() and np.abs(out.action).max() <= 1.0
    assert out.log_prob.shape == (2,) and np.isfinite(out.log_prob).all()


def test_features_depend_on_image_and_instruction(tiny2):
    imgs = frames(2, batch=1)
    base = tiny2.encode(imgs, ["pick up the cube"])
    other_text = tiny2.encode(imgs, ["open the drawer"])
    other_img = tiny2.encode([imgs[0], 255 - imgs[1]], ["pick up the cube"])
    assert not torch.allclose(base, other_text)
    assert not torch.allclose(base, other_img)


def test_bad_inputs_are_refused_with_clear_errors(tiny2):
    good = frames(2, batch=1)
    with pytest.raises(InputError, match="2 camera"):
        tiny2.encode(good[:1], ["x"])
    with pytest.raises(InputError, match="uint8"):
        tiny2.encode([good[0].astype(np.float32), good[1]], ["x"])
    with pytest.raises(InputError, match=r"\[B, H, W, 3\]"):
        tiny2.encode([good[0][..., :2], good[1]], ["x"])
    with pytest.raises(InputError, match="instruction"):
        tiny2.encode(good, ["x", "y"])


def test_eval_is_deterministic_rl_is_stochastic(tiny2):
    imgs, p = frames(2, batch=1), np.zeros((1, 8))
    a = tiny2.act(imgs, ["x"], p, stochastic=False).action
    b = tiny2.act(imgs, ["x"], p, stochastic=False).action
    assert np.array_equal(a, b)
    g = torch.Generator().manual_seed(1)
    s1 = tiny2.act(imgs, ["x"], p, stochastic=True, generator=g).action
    s2 = tiny2.act(imgs, ["x"], p, stochastic=True, generator=g).action
    assert not np.array_equal(s1, s2)


def test_frozen_backbone_bit_identical_after_rl_updates_of_the_head():
    model = VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8})
    before = model.backbone_fingerprint()
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # deliberately over ALL parameters
    with model.frozen():
        for step in range(5):
            feats = model.encode(frames(2, batch=4, seed=step), ["pick up the cube"] * 4)
            assert not feats.requires_grad and feats.grad_fn is None  # no autograd graph through the VLM
            action, log_prob, _ = model.head.sample(feats, torch.zeros(4, 8))
            loss = (log_prob + action.pow(2).sum(-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert all(p.grad is None for p in model.backbone.parameters())
    assert model.backbone_fingerprint() == before
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    # leaving frozen() restores trainability: SFT can train the whole model again
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_forward_is_differentiable_through_backbone_and_head():
    model = VLAModel.from_preset("tiny-llava", num_cameras=1)
    mean, log_std = model(frames(1, batch=2), ["a", "b"])
    (mean.pow(2).sum() + log_std.sum()).backward()
    vision = [p for n, p in model.backbone.named_parameters() if "vision" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision)
    assert model.head.mean.weight.grad is not None


@pytest.mark.parametrize("preset", ["tiny", "tiny-paligemma"])
def test_save_load_round_trip_gives_identical_actions(tmp_path, preset):
    model = VLAModel.from_preset(preset, num_cameras=2, head={"proprio_dim": 8}, seed=3)
    digest = model.save_pretrained(tmp_path / "m", version="7")
    assert digest == folder_sha256(tmp_path / "m")
    loaded = VLAModel.from_pretrained(tmp_path / "m")
    assert loaded.version == "7"
    assert read_config(tmp_path / "m").feature_shape == model.feature_shape
    imgs, p = frames(2, batch=3), np.random.default_rng(0).normal(size=(3, 8))
    a = model.act(imgs, ["x", "y", "z"], p, stochastic=False)
    b = loaded.act(imgs, ["x", "y", "z"], p, stochastic=False)
    assert np.array_equal(a.action, b.action)
    assert np.array_equal(a.features, b.features)


def test_tampered_or_mismatched_folders_are_refused(tmp_path, tiny2):
    root = tmp_path / "m"
    tiny2.save_pretrained(root)
    # one flipped byte in the backbone weights
    weights = root / "backbone" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="model.safetensors is corrupt or was modified"):
        VLAModel.from_pretrained(root)
    # a head of another shape, with the manifest "fixed up" to match: caught by the shape check
    tiny2.save_pretrained(root)
    other = VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8, "hidden_dim": 32})
    other.save_pretrained(tmp_path / "other")
    (root / "head.safetensors").write_bytes((tmp_path / "other" / "head.safetensors").read_bytes())
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["head.safetensors"] = file_sha256(root / "head.safetensors")
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="head tensor .* has shape"):
        VLAModel.from_pretrained(root)
    # a missing file
    (root / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match="missing file tokenizer/tokenizer.json"):
        VLAModel.from_pretrained(root)
    with pytest.raises(ModelFolderError, match="not a VLA model folder"):
        VLAModel.from_pretrained(tmp_path / "nothing")
    # a manifest pointing outside its folder
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["../other/head.safetensors"] = file_sha256(tmp_path / "other" / "head.safetensors")
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="outside the folder"):
        VLAModel.from_pretrained(root)
    (root / MANIFEST).write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        VLAModel.from_pretrained(root)


def test_lora_adapters_save_load_and_merge(tmp_path):
    model = VLAModel.from_preset("tiny", num_cameras=1, head={"proprio_dim": 8}, seed=1)
    model.add_lora(r=4, alpha=8)
    lora = [n for n, _ in model.backbone.named_parameters() if "lora_" in n]
    assert lora and all("language_model" in n and ("q_proj" in n or "v_proj" in n) for n in lora)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == set(lora)
    # train the adapters a little so they are not the zero-init identity
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    imgs = frames(1, batch=2)
    for _ in range(3):
        mean, _ = model(imgs, ["a", "b"], torch.zeros(2, 8))
        loss = (mean - 0.5).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = np.zeros((2, 8))
    ref = model.act(imgs, ["a", "b"], p, stochastic=False)
    model.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    loaded = VLAModel.from_pretrained(tmp_path / "lora")
    assert loaded.has_lora
    got = loaded.act(imgs, ["a", "b"], p, stochastic=False)
    np.testing.assert_allclose(got.action, ref.action, atol=1e-6)
    loaded.merge_lora()
    assert not loaded.has_lora and not any("lora_" in n for n, _ in loaded.backbone.named_parameters())
    merged = loaded.act(imgs, ["a", "b"], p, stochastic=False)
    np.testing.assert_allclose(merged.action, ref.action, atol=1e-5)
    # the base weights alone (adapter removed) give different actions: the adapter mattered
    import shutil

    shutil.rmtree(tmp_path / "lora" / "adapter")
    base = VLAModel.from_pretrained(tmp_path / "lora", verify=False)
    assert not np.allclose(base.act(imgs, ["a", "b"], p, stochastic=False).action, ref.action, atol=1e-5)


def test_head_weight_payload_round_trip_and_rejections(tiny2):
    state = {k: v + 0.01 for k, v in tiny2.head_state_dict().items()}
    payload = encode_head_weights(state, 12, tiny2.config.head)
    decoded, version = decode_head_weights(payload, tiny2.config.head)
    assert version == "12" and all(torch.equal(decoded[k], state[k]) for k in state)
    flipped = bytearray(payload)
    flipped[-3] ^= 0x01
    with pytest.raises(PayloadError, match="checksum mismatch"):
        decode_head_weights(bytes(flipped))
    with pytest.raises(PayloadError, match="corrupt"):
        decode_head_weights(payload[: len(payload) // 2])
    with pytest.raises(PayloadError, match="head config"):
        decode_head_weights(payload, HeadConfig(feature_dim=64, hidden_dim=32))
    nan_state = dict(state)
    nan_state["mean.bias"] = torch.full_like(state["mean.bias"], float("nan"))
    with pytest.raises(PayloadError, match="NaN"):
        decode_head_weights(encode_head_weights(nan_state, 13))


def irevla(*argv: str) -> int:
    """The `irevla` entry point in-process (the same parser and code as the console script, no interpreter start)."""
    from irevla_ros.cli import main

    return main(list(argv))


def test_cli_init_writes_a_loadable_folder(tmp_path, capsys):
    out = tmp_path / "m"
    assert irevla("model", "init", "--preset", "tiny-llava", "--cameras", "2", "--out", str(out)) == 0
    assert "features [" in capsys.readouterr().out
    model = VLAModel.from_pretrained(out)
    assert model.config.family == "llava" and model.config.num_cameras == 2
    assert irevla("model", "info", str(out)) == 0
    assert json.loads(capsys.readouterr().out)["feature_shape"] == list(model.feature_shape)
    (out / "head.safetensors").write_bytes(b"garbage")
    assert irevla("model", "info", str(out)) == 1
    assert "head.safetensors is corrupt" in capsys.readouterr().err
    # the console script itself is installed and answers --help
    res = subprocess.run(["irevla", "model", "init", "--help"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert res.returncode == 0 and "--preset" in res.stdout and "blip2-2.7b-shape" in res.stdout


def test_wrap_a_local_hf_vlm_folder(tmp_path):
    """`from_hf` / `irevla model init --from-hf`: a plain Hugging Face folder (as downloaded by a user beforehand)
    becomes a VLA model folder with a fresh head; the backbone's weights are the folder's, unchanged."""
    src = VLAModel.from_preset("tiny-llava", num_cameras=1, seed=5)
    hf_dir = tmp_path / "hf_llava"
    src.backbone.save_pretrained(str(hf_dir))
    src.tokenizer.save_pretrained(str(hf_dir))
    wrapped = VLAModel.from_hf(hf_dir, num_cameras=2, head={"proprio_dim": 8})
    assert wrapped.config.family == "llava" and wrapped.config.num_cameras == 2
    assert wrapped.backbone_fingerprint() == src.backbone_fingerprint()
    feats = wrapped.encode(frames(2, batch=1), ["stack the blocks"])
    assert feats.shape[1:] == wrapped.feature_shape and torch.isfinite(feats).all()
    out = tmp_path / "vla"
    assert irevla("model", "init", "--from-hf", str(hf_dir), "--cameras", "2", "--out", str(out)) == 0
    assert VLAModel.from_pretrained(out).backbone_fingerprint() == src.backbone_fingerprint()
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="unsupported backbone model_type"):
        VLAModel.from_hf(hf_dir)
