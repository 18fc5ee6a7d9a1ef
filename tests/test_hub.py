"""Downloads of pretrained weights, against a loopback HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import importlib
import socket
import io
import threading

import numpy as np
import pytest
import torch

import xearthformer
from xearthformer.models.base import Forecaster
from xearthformer.errors import ConfigError, DownloadError

# the module, not the package's function of the same name
pre = importlib.import_module("xearthformer.hub")

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


class StandIn:
    """A loopback server for one file: honours Range, can cut a transfer short."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.requests: list[str | None] = []     # Range header of each request
        self.cut_after: int | None = None        # drop the connection after this many bytes
        self.honour_range = True
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                owner.requests.append(self.headers.get("Range"))
                if not self.path.endswith(".pt"):
                    self.send_error(404, "no such checkpoint")
                    return
                start = 0
                if owner.honour_range and self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(owner.payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(owner.payload)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(owner.payload) - 1}/{len(owner.payload)}")
                else:
                    self.send_response(200)
                body = owner.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.cut_after is not None:
                    body = body[:owner.cut_after]
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    s = StandIn(PAYLOAD)
    yield s
    s.close()


@pytest.fixture
def entry(server, monkeypatch, tmp_path):
    """Point the ENSO registry entry at the loopback server and the cache at tmp_path."""
    e = pre.one_file(server.url + "earthformer_icarenso2021.pt",
                       hashlib.sha256(PAYLOAD).hexdigest(), "enso", "stand-in")
    monkeypatch.setitem(pre.REGISTRY, "earthformer-enso", e)
    monkeypatch.setenv("XEARTHFORMER_CACHE", str(tmp_path / "cache"))
    return e


def test_fetch_downloads_once_into_the_cache(server, entry, tmp_path):
    path = pre.fetch("earthformer-enso", progress=False)
    assert path == tmp_path / "cache" / "earthformer_icarenso2021.pt"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name(path.name + ".part").exists()
    assert pre.fetch("earthformer-enso") == path
    assert len(server.requests) == 1                      # cached: no second request


def test_interrupted_download_resumes_with_range(server, entry, tmp_path):
    server.cut_after = 1000
    with pytest.raises(DownloadError, match="run again to resume"):
        pre.fetch("earthformer-enso", progress=False)
    part = tmp_path / "cache" / "earthformer_icarenso2021.pt.part"
    assert part.read_bytes() == PAYLOAD[:1000]
    server.cut_after = None
    path = pre.fetch("earthformer-enso", progress=False)
    assert server.requests == [None, "bytes=1000-"]
    assert path.read_bytes() == PAYLOAD


def test_server_without_ranges_restarts(server, entry, tmp_path):
    server.honour_range = False
    part = tmp_path / "cache" / "earthformer_icarenso2021.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from another file")
    assert pre.fetch("earthformer-enso", progress=False).read_bytes() == PAYLOAD


def test_complete_part_is_finished_without_a_body(server, entry, tmp_path):
    part = tmp_path / "cache" / "earthformer_icarenso2021.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)                             # stopped just before the rename
    assert pre.fetch("earthformer-enso", progress=False).read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={len(PAYLOAD)}-"]


def test_hash_mismatch_deletes_the_file(server, monkeypatch, tmp_path):
    bad = pre.one_file(server.url + "earthformer_sevir.pt", "0" * 64, "sevir", "stand-in")
    monkeypatch.setitem(pre.REGISTRY, "earthformer-sevir", bad)
    with pytest.raises(DownloadError, match="expected 0000") as info:
        pre.fetch("earthformer-sevir", cache=tmp_path, progress=False)
    assert hashlib.sha256(PAYLOAD).hexdigest() in str(info.value)
    assert list(tmp_path.iterdir()) == []
    # a hand-placed file with the wrong hash is refused too, and left alone
    (tmp_path / "earthformer_sevir.pt").write_bytes(b"not it")
    with pytest.raises(DownloadError, match="delete it"):
        pre.fetch("earthformer-sevir", cache=tmp_path)


def test_offline_message_says_where_to_put_the_file(monkeypatch, tmp_path):
    with socket.socket() as s:          # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = pre.one_file(f"http://127.0.0.1:{port}/earthformer_sevir.pt", None, "sevir", "x")
    monkeypatch.setitem(pre.REGISTRY, "earthformer-sevir", e)
    monkeypatch.setenv("XEARTHFORMER_CACHE", str(tmp_path / "c"))
    with pytest.raises(DownloadError) as info:
        pre.fetch("earthformer-sevir")
    message = str(info.value)
    assert "offline" in message and e.urls["weights"] in message
    assert str(tmp_path / "c" / "earthformer_sevir.pt") in message and "XEARTHFORMER_CACHE" in message
    assert isinstance(info.value, OSError)


def test_http_error_and_unknown_name(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        pre.download(server.url + "missing.bin", tmp_path / "x.bin", progress=False)
    with pytest.raises(ConfigError, match="earthformer-sevir"):
        pre.fetch("earthformer-nbody")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("XEARTHFORMER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pre.cache_dir() == tmp_path / "xearthformer"
    monkeypatch.setenv("XEARTHFORMER_CACHE", str(tmp_path / "elsewhere"))
    assert pre.cache_dir() == tmp_path / "elsewhere"


def test_registry_points_at_the_official_readme_urls():
    assert {k: v.urls for k, v in pre.REGISTRY.items()} == {
        "earthformer-sevir": {
            "weights": "https://earthformer.s3.amazonaws.com/pretrained_checkpoints/earthformer_sevir.pt"},
        "earthformer-enso": {
            "weights": "https://earthformer.s3.amazonaws.com/pretrained_checkpoints/earthformer_icarenso2021.pt"},
        "prediff-sevirlr": {  # gaozhihan/PreDiff src/prediff/utils/download.py
            part: "https://hkustconnect-my.sharepoint.com/:u:/g/personal/zgaoag_connect_ust_hk/" + file_id
                  + "&download=1" for part, file_id in (
                      ("vae", "EZ-BfMnX-dhFrccXtLuCB78BPs3xBc-ke1BG4_9Jf7UblQ?e=bMplKs"),
                      ("denoiser", "EUp432GSXplCuhN7-WUF6YsBK4WrWiL8A9RZCA1Pf9D0Ag?e=eY6hcQ"),
                      ("alignment", "EWHH7y6w9D5Dg01YNX99IFQBA3tCR2a7s7z7Xv0BiNLV7Q?e=Hd9jCH"))},
    }
    assert {v.family for v in pre.REGISTRY.values()} == {"earthformer", "prediff"}
    assert pre.REGISTRY["earthformer-enso"].filenames == {"weights": "earthformer_icarenso2021.pt"}


def test_package_attribute_is_the_function():
    # the function is exported from a module of another name, so importing xearthformer.hub
    # never replaces the package attribute with a module
    assert xearthformer.pretrained is pre.pretrained


# official earthformer_enso_v1.yaml model settings (amazon-science/earth-forecasting-transformer)
ENSO_V1 = dict(
    input_shape=[12, 24, 48, 1], target_shape=[14, 24, 48, 1], base_units=64, scale_alpha=1.0,
    enc_depth=[1, 1], dec_depth=[1, 1], enc_use_inter_ffn=True, dec_use_inter_ffn=True,
    dec_hierarchical_pos_embed=False, downsample=2, downsample_type="patch_merge",
    upsample_type="upsample", num_global_vectors=0, use_dec_self_global=False,
    dec_self_update_global=True, use_dec_cross_global=False, use_global_vector_ffn=False,
    use_global_self_attn=False, separate_global_qkv=False, global_dim_ratio=1,
    enc_attn_patterns=["axial"] * 2, dec_self_attn_patterns=["axial"] * 2,
    dec_cross_attn_patterns=["cross_1x1"] * 2, dec_cross_last_n_frames=None,
    attn_drop=0.1, proj_drop=0.1, ffn_drop=0.1, num_heads=4, ffn_activation="gelu",
    gated_ffn=False, norm_layer="layer_norm", padding_type="zeros", pos_embed_type="t+h+w",
    use_relative_pos=True, self_attn_use_final_proj=True, dec_use_first_self_attn=False,
    z_init_method="zeros", initial_downsample_type="conv", initial_downsample_activation="leaky",
    initial_downsample_scale=[1, 1, 2], initial_downsample_conv_layers=2,
    final_upsample_conv_layers=1, checkpoint_level=0,
)


@pytest.mark.official
def test_pretrained_converts_the_official_checkpoint(monkeypatch, tmp_path):
    # a stand-in for earthformer_icarenso2021.pt: an official model's state_dict, as published
    from earthformer.cuboid_transformer.cuboid_transformer import CuboidTransformerModel

    torch.manual_seed(0)
    official = CuboidTransformerModel(**ENSO_V1).eval()
    buffer = io.BytesIO()
    torch.save(official.state_dict(), buffer)
    server = StandIn(buffer.getvalue())
    try:
        monkeypatch.setitem(pre.REGISTRY, "earthformer-enso", pre.one_file(
            server.url + "earthformer_icarenso2021.pt", None, "enso", "stand-in"))
        fc = xearthformer.pretrained("earthformer-enso", cache=tmp_path, progress=False)
    finally:
        server.close()
    assert isinstance(fc, Forecaster)
    assert (fc.context, fc.lead, fc.spec.grid.shape) == (12, 14, (24, 48))
    assert fc.metadata["sha256"] == hashlib.sha256(buffer.getvalue()).hexdigest()
    x = torch.rand(1, 12, 24, 48, 1)
    with torch.no_grad():
        np.testing.assert_allclose(fc.model(x).numpy(), official(x).numpy(), atol=2e-5)
