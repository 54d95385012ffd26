"""Checkpoint layout, architecture inference, safe loading and download behaviour."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error

import pytest
import torch

import segany
from segany.checkpoints import (
    OFFICIAL_CHECKPOINTS,
    CheckpointError,
    DownloadError,
    download_checkpoint,
    infer_config,
    load_model,
    read_checkpoint,
    save_model,
)
from segany.modeling import CONFIGS, build_sam


@pytest.fixture(scope="module")
def layouts(reference_dir):
    return json.loads((reference_dir / "official_state_dict_layouts.json").read_text())


def _meta_model(name):
    with torch.device("meta"):
        return build_sam(name)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_official_layout_keys_and_shapes(layouts, name):
    model = _meta_model(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = {k: list(v) for k, v in layouts[name].items()}
    assert sorted(ours) == sorted(official)
    assert ours == official


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_architecture_inferred_from_official_shapes(layouts, name):
    state = {k: torch.empty(v, device="meta") for k, v in layouts[name].items()}
    config = infer_config(state)
    assert config == CONFIGS[name]
    assert config.name == name


def test_fixture_model_loads_without_config(ref_checkpoint, manifest):
    model = load_model(ref_checkpoint)
    expected = manifest["model_config"]
    c = model.config
    assert c.encoder_embed_dim == expected["encoder_embed_dim"]
    assert c.encoder_depth == expected["encoder_depth"]
    assert c.encoder_num_heads == expected["encoder_num_heads"]
    assert list(c.encoder_global_attn_indexes) == expected["encoder_global_attn_indexes"]
    assert c.window_size == expected["window_size"]
    assert c.decoder_mlp_dim == expected["decoder_mlp_dim"]


def test_fixture_sha256(ref_checkpoint, manifest):
    digest = hashlib.sha256(ref_checkpoint.read_bytes()).hexdigest()
    assert digest == manifest["sha256"]["ref_small.pth"]


def test_registry_is_strict_about_architecture(ref_checkpoint):
    model = segany.load_model(ref_checkpoint)
    # The registry's named architectures are strict: the small fixture is not a vit_b.
    with pytest.raises(CheckpointError, match="shape mismatches"):
        segany.sam_model_registry["vit_b"](checkpoint=str(ref_checkpoint))
    assert model.config.encoder_depth == 4


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_save_and_reload_round_trip(ref_model, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    save_model(ref_model, path)
    reloaded = load_model(path)
    assert reloaded.config == ref_model.config
    for (k, a), (_, b) in zip(ref_model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, I am text")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(path)


def test_truncated_checkpoint(ref_checkpoint, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(ref_checkpoint.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError):
        load_model(path)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(path)


def test_arbitrary_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="could not read"):
        read_checkpoint(path)


def test_missing_keys_are_named(ref_checkpoint, tmp_path):
    state, _ = read_checkpoint(ref_checkpoint)
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing keys.*mask_decoder.iou_token.weight"):
        load_model(path)


def test_shape_mismatch_is_named(ref_checkpoint, tmp_path):
    state, _ = read_checkpoint(ref_checkpoint)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "mismatch.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"mask_decoder.iou_token.weight: checkpoint \(1, 128\)"):
        load_model(path)


def test_non_sam_state_dict(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        load_model(path)


# -- download (no network: a fake opener stands in for the server) ---------------------------


class FakeServer:
    """Serves bytes with HTTP Range support; can cut the connection after ``cut`` bytes."""

    def __init__(self, payload: bytes, cut: int | None = None):
        self.payload = payload
        self.cut = cut
        self.requests = []

    def __call__(self, request, timeout=None):
        rng = request.get_header("Range")
        self.requests.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = self.payload[start:]
        server = self

        class Response(io.BytesIO):
            status = 206 if rng else 200

            def read(self, n=-1):
                data = super().read(n)
                if server.cut is not None and self.tell() + start > server.cut:
                    server.cut = None
                    raise ConnectionResetError("connection reset")
                return data

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        return Response(body)


@pytest.fixture
def fake_official(monkeypatch):
    payload = bytes(range(256)) * 12_000  # ~3 MB
    spec = OFFICIAL_CHECKPOINTS["vit_b"]
    fake = type(spec)(spec.model_type, spec.filename, spec.url, len(payload), hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, "vit_b", fake)
    return payload


def test_download_verifies_and_caches(fake_official, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGANY_CACHE", str(tmp_path / "cache"))
    server = FakeServer(fake_official)
    path = download_checkpoint("vit_b", opener=server)
    assert path == tmp_path / "cache" / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == fake_official
    # Second call: already there and verified, no request at all.
    again = download_checkpoint("vit_b", opener=lambda *a, **k: pytest.fail("network used"))
    assert again == path


def test_download_resumes_after_interruption(fake_official, tmp_path):
    server = FakeServer(fake_official, cut=1_500_000)
    with pytest.raises(ConnectionResetError):
        download_checkpoint("vit_b", tmp_path, opener=server)
    part = tmp_path / "sam_vit_b_01ec64.pth.part"
    done = part.stat().st_size
    assert 0 < done < len(fake_official)
    path = download_checkpoint("vit_b", tmp_path, opener=server)
    assert server.requests == [None, f"bytes={done}-"]
    assert path.read_bytes() == fake_official
    assert not part.exists()


def test_download_rejects_bad_hash(fake_official, tmp_path):
    server = FakeServer(b"x" * len(fake_official))
    with pytest.raises(DownloadError, match="sha256"):
        download_checkpoint("vit_b", tmp_path, opener=server)
    assert not (tmp_path / "sam_vit_b_01ec64.pth").exists()
    assert not (tmp_path / "sam_vit_b_01ec64.pth.part").exists()


def test_download_without_network_names_the_file(tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(DownloadError, match=r"place it at .*sam_vit_h_4b8939.pth"):
        download_checkpoint("vit_h", tmp_path, opener=offline)


def test_positions_resized_for_another_input_size(ref_checkpoint, ref_model):
    """Fine-tuning at another resolution: the checkpoint's position weights are fitted on load."""
    import dataclasses

    from segany.modeling.image_encoder import get_rel_pos

    config = dataclasses.replace(ref_model.config, img_size=512, window_size=7)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(ref_checkpoint, config=config)
    model = load_model(ref_checkpoint, config=config, resize_positions=True)
    assert model.image_encoder.pos_embed.shape == (1, 32, 32, ref_model.config.encoder_embed_dim)
    for index, (new, old) in enumerate(zip(model.image_encoder.blocks, ref_model.image_encoder.blocks)):
        size = 32 if index in config.encoder_global_attn_indexes else 7
        assert new.attn.rel_pos_h.shape[0] == 2 * size - 1
        # Resized once at load = what get_rel_pos's own run-time interpolation makes of the old table.
        for name in ("rel_pos_h", "rel_pos_w"):
            want = get_rel_pos(size, size, getattr(old.attn, name))
            assert torch.allclose(get_rel_pos(size, size, getattr(new.attn, name)), want, atol=1e-6)
    untouched = {k: v for k, v in ref_model.state_dict().items() if "pos" not in k}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in untouched.items())
    with torch.no_grad():
        assert model.image_encoder(torch.zeros(1, 3, 512, 512)).shape == (1, 256, 32, 32)
    # Same architecture: nothing to resize.
    same = load_model(ref_checkpoint, resize_positions=True)
    assert all(torch.equal(same.state_dict()[k], v) for k, v in ref_model.state_dict().items())
