"""Hostile model inputs end in one safe line: custom code, FIFOs and devices, huge headers,
symlinks out of a model directory, escape sequences in file content, symlink loops and long names."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from model_files import small_gguf

from pytest_minerva.derive.cache import ArtifactCache
from pytest_minerva.errors import FormatError, MinervaError, PathEscape, UnknownModel, UnsafeFile
from pytest_minerva.formats import verify, verify_command
from pytest_minerva.formats.common import CHECKER_BUG, CheckerBug
from pytest_minerva.models.catalog import Catalog, parse_catalog
from pytest_minerva.models.local import model_from_path, select_models
from pytest_minerva.models.resolve import ResolvedArtifact, Resolver

REPO = Path(__file__).resolve().parent.parent
#: Long enough that a hang is a failure, not a wait, on a loaded machine.
CLI_TIMEOUT_S = 120


def one_safe_line(text: str) -> str:
    assert "\n" not in text and "\r" not in text and "\x1b" not in text, repr(text)
    return text


def run_cli(*argv: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``minerva ARGV`` in a child process, so an old hang is a TimeoutExpired failure, not a stuck run."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_minerva.commands", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def write_safetensors_dir(root: Path, config: dict[str, object]) -> Path:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    root.mkdir(parents=True, exist_ok=True)
    safetensors_numpy.save_file({"w": np.ones((2, 2), np.float32)}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(config))
    return root


# -- 5: a model that ships its own code is refused, and no engine reads stdin -------------------------------


@pytest.fixture
def evil_model(tmp_path: Path) -> tuple[Path, Path]:
    """A model directory whose config names its own code (``auto_map``) and an unknown model_type;
    running ``evil.py`` writes the marker file."""
    marker = tmp_path / "evil-code-ran"
    root = write_safetensors_dir(
        tmp_path / "evil",
        {
            "model_type": "evilnet",
            "architectures": ["EvilModel"],
            "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
        },
    )
    (root / "evil.py").write_text(
        textwrap.dedent(
            f"""
            open({str(marker)!r}, "w").write("ran")
            from transformers import PretrainedConfig

            class EvilConfig(PretrainedConfig):
                model_type = "evilnet"
            """
        )
    )
    return root, marker


def run_python_answering_yes(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a child whose stdin answers "y" to any prompt (transformers' "run the custom code?")."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], input="y\ny\ny\n", capture_output=True, text=True, timeout=300, env=env
    )


def test_the_transformers_backend_refuses_a_model_with_its_own_code(
    evil_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    root, marker = evil_model
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from pytest_minerva.backends.base import LoadOptions
        from pytest_minerva.backends.transformers import TransformersBackend
        from pytest_minerva.errors import MinervaError
        from pytest_minerva.models.resolve import ResolvedArtifact

        artifact = ResolvedArtifact("evil", "safetensors", None, Path({str(root)!r}), "explicit", "evilnet")
        try:
            TransformersBackend(artifact, LoadOptions())
        except MinervaError as exc:
            print("REFUSED", type(exc).__name__, exc)
        """
    )
    ran = run_python_answering_yes(code, tmp_path)
    assert not marker.exists(), "the model's own code ran"
    refusal = [line for line in ran.stdout.splitlines() if line.startswith("REFUSED")]
    assert refusal, ran.stdout + ran.stderr
    assert refusal[0].startswith(f"REFUSED UnsafeFile {root}: config.json names code the model ships (auto_map ")
    assert "minerva never runs code a model ships" in refusal[0]
    assert "Do you wish to run the custom code" not in ran.stdout + ran.stderr


def test_transformers_is_told_not_to_trust_remote_code_even_past_the_refusal(
    evil_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    root, marker = evil_model
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        import pytest_minerva.backends.transformers as backend
        from pytest_minerva.backends.base import LoadOptions
        from pytest_minerva.models.resolve import ResolvedArtifact

        backend.refuse_custom_code = lambda *args, **kwargs: None
        artifact = ResolvedArtifact("evil", "safetensors", None, Path({str(root)!r}), "explicit", "evilnet")
        try:
            backend.TransformersBackend(artifact, LoadOptions())
        except Exception as exc:
            print("RAISED", type(exc).__name__)
        """
    )
    ran = run_python_answering_yes(code, tmp_path)
    assert not marker.exists(), "the model's own code ran"
    assert "RAISED" in ran.stdout, ran.stdout + ran.stderr
    assert "Do you wish to run the custom code" not in ran.stdout + ran.stderr


def test_the_mlx_derivation_and_its_config_check_refuse_a_model_with_its_own_code(
    evil_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("mlx_lm")
    root, marker = evil_model
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from pytest_minerva.derive import safetensors_to_mlx
        from pytest_minerva.errors import MinervaError
        from pytest_minerva.models.resolve import ResolvedArtifact

        root = Path({str(root)!r})
        artifact = ResolvedArtifact("evil", "safetensors", None, root, "explicit", "evilnet")
        for name, call in (
            ("derive", lambda: safetensors_to_mlx.derive(artifact, Path({str(tmp_path / "out")!r}))),
            ("check_mlx_config", lambda: safetensors_to_mlx.check_mlx_config(root, root)),
        ):
            try:
                call()
            except MinervaError as exc:
                print("REFUSED", name, type(exc).__name__, exc)
            except Exception as exc:
                print("RAISED", name, type(exc).__name__)
        """
    )
    (tmp_path / "out").mkdir()
    ran = run_python_answering_yes(code, tmp_path)
    assert not marker.exists(), "the model's own code ran"
    lines = [line for line in ran.stdout.splitlines() if line.startswith("REFUSED")]
    assert [line.split()[1:3] for line in lines] == [["derive", "UnsafeFile"], ["check_mlx_config", "UnsafeFile"]], (
        ran.stdout + ran.stderr
    )
    assert all("config.json names code the model ships" in line for line in lines)


def test_an_explicit_model_directory_with_its_own_code_is_refused_before_any_engine(
    evil_model: tuple[Path, Path],
) -> None:
    root, marker = evil_model
    with pytest.raises(UnsafeFile) as info:
        select_models(Catalog.load(), [str(root)])
    assert one_safe_line(str(info.value)).startswith(f"{root.resolve()}: config.json names code the model ships")
    assert not marker.exists()


def test_custom_code_problems_name_the_key_and_an_unknown_model_type(tmp_path: Path) -> None:
    from pytest_minerva.formats.custom_code import custom_code_problem

    def problem(name: str, config: dict[str, object], tokenizer: dict[str, object] | None = None) -> str | None:
        root = write_safetensors_dir(tmp_path / name, config)
        if tokenizer is not None:
            (root / "tokenizer_config.json").write_text(json.dumps(tokenizer))
        return custom_code_problem(root, {"llama"})

    assert problem("a", {"model_type": "llama"}) is None
    assert problem("b", {"model_type": "llama"}, {"auto_map": {"AutoTokenizer": ["t.T", None]}}) == (
        "tokenizer_config.json names code the model ships (auto_map \"AutoTokenizer: ['t.T', None]\"); "
        "minerva never runs code a model ships, so the model is refused"
    )
    assert problem("c", {"model_type": "llama", "model_file": "m.py"}) == (
        "config.json names code the model ships (model_file 'm.py'); "
        "minerva never runs code a model ships, so the model is refused"
    )
    assert problem("d", {"model_type": "\x1b[31mevil\nx"}) == (
        "config.json model_type '\\x1b[31mevil\\nx' is not an architecture the engine implements; only the "
        "model's own code could build it, and minerva never runs code a model ships, so the model is refused"
    )


def test_a_worker_gives_engines_an_empty_stdin(tmp_path: Path) -> None:
    from pytest_minerva.backends import BackendSpec
    from pytest_minerva.guards.process import WorkerProcess, worker_environment
    from pytest_minerva.guards.protocol import spec_to_json

    (tmp_path / "stdin_reading_engine.py").write_text(
        textwrap.dedent(
            """
            class Engine:
                @classmethod
                def build_facts(cls):
                    try:
                        return {"read": input("Do you wish to run the custom code? [y/N] ")}
                    except EOFError:
                        return {"read": None}
            """
        )
    )
    env = worker_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    worker = WorkerProcess(env)
    try:
        spec = BackendSpec("stdin-reader", formats=("gguf",), target="stdin_reading_engine:Engine")
        worker.send({"op": "facts", "spec": spec_to_json(spec)})
        reply = worker.receive(time.monotonic() + 60)
    except TimeoutError:
        pytest.fail("the engine waited on the worker's stdin")
    finally:
        worker.stop()
    assert reply is not None
    assert reply[0] == {"ok": True, "value": {"read": None}}


# -- 8: FIFOs and devices are never opened as models ----------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    path = tmp_path / "f.bin"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["f.bin", "f.gguf", "f.safetensors"])
def test_a_fifo_given_to_pytest_model_is_refused_at_once(pytester: pytest.Pytester, name: str) -> None:
    path = pytester.path / name
    os.mkfifo(path)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--model", str(path), "--minerva-timeout", "2", "--collect-only", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --model {path}: not a regular file or a directory"])


def test_a_device_given_to_pytest_model_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--model", "/dev/zero", "--collect-only", timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --model /dev/zero: not a regular file or a directory"])


@pytest.mark.parametrize("device", ["fifo", "/dev/zero"])
def test_minerva_bench_and_verify_refuse_a_fifo_or_device_in_one_line(fifo: Path, device: str) -> None:
    path = str(fifo) if device == "fifo" else device
    bench = run_cli("bench", "--model", path, "--backend", "llama_cpp", "--scenario", "short")
    assert bench.returncode != 0
    assert bench.stderr == f"minerva: --model {path}: not a regular file or a directory\n"
    checked = run_cli("verify", path)
    assert (checked.returncode, checked.stdout, checked.stderr) == (1, f"{path}: not a regular file\n", "")


def test_a_fifo_in_a_model_directory_is_never_opened(tmp_path: Path) -> None:
    root = write_safetensors_dir(tmp_path / "m", {"model_type": "llama"})
    os.mkfifo(root / "tokenizer_config.json")
    with pytest.raises(FormatError, match=r"tokenizer_config\.json is not a regular file$"):
        model_from_path(root)
    shard = tmp_path / "shard"
    write_safetensors_dir(shard, {"model_type": "llama"})
    (shard / "model.safetensors").unlink()
    os.mkfifo(shard / "model.safetensors")
    with pytest.raises(FormatError, match=r"no \*\.safetensors weight files$"):
        verify(shard)


# -- 10: a huge SafeTensors header is refused in memory proportional to its length ----------------------------


def _peak_rss_bytes_of_verify(path: Path) -> tuple[int, str]:
    code = textwrap.dedent(
        f"""
        import resource, sys
        from pytest_minerva.formats import verify
        from pytest_minerva.errors import FormatError
        try:
            verify({str(path)!r})
            print("ok")
        except FormatError as exc:
            print(exc)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    message, peak_kib = ran.stdout.splitlines()
    return int(peak_kib) * 1024, message


def test_a_95_mb_header_of_empty_entries_is_refused_without_gigabytes(tmp_path: Path) -> None:
    big = tmp_path / "big.safetensors"
    with big.open("wb") as out:
        out.write(bytes(8) + b"{")
        for start in range(0, 6_900_000, 100_000):
            out.write(",".join(f'"t{i}":{{}}' for i in range(start, start + 100_000)).encode())
            out.write(b"," if start + 100_000 < 6_900_000 else b"}")
        header_length = out.tell() - 8
        out.seek(0)
        out.write(struct.pack("<Q", header_length))
    assert header_length > 95_000_000
    small = write_safetensors_dir(tmp_path / "small", {"model_type": "llama"}) / "model.safetensors"
    baseline, ok = _peak_rss_bytes_of_verify(small)
    assert ok == "ok"
    peak, message = _peak_rss_bytes_of_verify(big)
    assert peak - baseline < 3 * header_length, f"peak RSS {peak >> 20} MiB over a baseline of {baseline >> 20} MiB"
    assert message == (
        f"{big}: the header holds more than 1048576 JSON values and keys, more than 65536 tensors "
        "(the most allowed) can need"
    )


def test_a_header_whose_separators_sit_in_strings_is_still_read(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "commas.safetensors"
    safetensors_numpy.save_file({"w": np.ones(2, np.float32)}, str(path), metadata={"notes": ",:{[" * 300_000 + '\\"'})
    summary = verify(path)
    assert summary.tensor_count == 1
    assert summary.metadata["notes"].startswith(",:{[")


# -- 11: a symlink in an explicit model directory may not lead out of it --------------------------------------


SECRET = b"TOPSECRET-password=hunter2\n"


def test_a_shard_symlinked_outside_an_explicit_model_directory_is_refused_unread(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llama"}')
    os.symlink(secret, root / "model.safetensors")
    leaked = (str(int.from_bytes(SECRET[:8], "little")), "TOPSECRET", "hunter2")
    with pytest.raises(PathEscape) as info:
        select_models(Catalog.load(), [str(root)])
    message = one_safe_line(str(info.value))
    assert message.startswith(f"{root.resolve() / 'model.safetensors'}: a symlink that leads outside the model")
    assert not any(text in message for text in leaked)
    # Checked directly, the file's first bytes are no header length to quote either.
    with pytest.raises(FormatError) as checked:
        verify(root)
    assert not any(text in str(checked.value) for text in leaked)
    assert str(checked.value).endswith(
        "model.safetensors: not a SafeTensors file: its first 8 bytes, read as the "
        "header length, exceed the 100000000-byte limit of the format"
    )


def test_the_target_directory_itself_and_a_hugging_face_snapshot_are_fine(tmp_path: Path) -> None:
    elsewhere = write_safetensors_dir(tmp_path / "elsewhere", {"model_type": "llama"})
    assert model_from_path(elsewhere).explicit_path == elsewhere.resolve()
    repo = tmp_path / "hub" / "models--org--toy"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in ("config.json", "model.safetensors"):
        blob = repo / "blobs" / name.replace(".", "-")
        blob.write_bytes((elsewhere / name).read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    assert model_from_path(snapshot).explicit_path == snapshot.resolve()


# -- 9: text from a file reaches messages and summaries escaped ------------------------------------------------


HOSTILE = "\x1b[31mevil\nevil.gguf: ok"


def test_a_gguf_architecture_with_escapes_stays_on_one_escaped_line(tmp_path: Path) -> None:
    path = small_gguf(tmp_path / "m.gguf", HOSTILE)
    summary = verify(path)
    assert summary.architecture == "\\x1b[31mevil\\nevil.gguf: ok"
    lines = summary.describe().split("\n")
    assert len(lines) == 8
    for line in [*lines, summary.one_line()]:
        one_safe_line(line)
    assert "  architecture:   \\x1b[31mevil\\nevil.gguf: ok" in lines
    model = model_from_path(path)
    one_safe_line(model.architecture)
    one_safe_line(model.description)
    out = __import__("io").StringIO()
    assert verify_command([str(path)], deep=False, out=out) == 0
    assert out.getvalue().count("\n") == 8 and "\x1b" not in out.getvalue()


def test_shard_names_and_model_types_with_escapes_stay_escaped(tmp_path: Path) -> None:
    root = write_safetensors_dir(tmp_path / "m", {"model_type": HOSTILE})
    summary = verify(root)
    assert summary.architecture == "\\x1b[31mevil\\nevil.gguf: ok"
    for line in [*summary.describe().split("\n"), summary.one_line()]:
        one_safe_line(line)
    shard = "model-\n\x1b[2Kok.safetensors"
    (root / "model.safetensors").rename(root / shard)
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard, "v": shard}}))
    with pytest.raises(FormatError) as info:
        verify(root)
    one_safe_line(str(info.value))
    one_safe_line(info.value.problem)
    (root / "model.safetensors.index.json").unlink()
    (root / shard).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(FormatError) as info:
        verify(root)
    assert one_safe_line(info.value.problem).startswith("model-\\n\\x1b[2Kok.safetensors: the header is not valid JSON")
    artifact = ResolvedArtifact("m", "safetensors", None, tmp_path / "a\nb", "explicit", "llama")
    one_safe_line(artifact.describe())


# -- 13: symlink loops and over-long names are one-line errors ------------------------------------------------


TOY_CATALOG = """
[models.toy]
architecture = "llama"

[[models.toy.artifacts]]
format = "safetensors"
quant = "f32"
primary = true
"""


def test_a_symlink_loop_in_the_model_dir_is_one_line(tmp_path: Path) -> None:
    toy = parse_catalog(TOY_CATALOG, "toy.toml")["toy"]
    root = write_safetensors_dir(tmp_path / "models" / "toy" / "safetensors", {"model_type": "llama"})
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=tmp_path / "models", verify=False)
    with pytest.raises(FormatError) as info:
        resolver.resolve(toy, toy.artifacts[0])
    assert one_safe_line(str(info.value)) == f"{root / 'loop1'}: a symlink loop (too many levels of symbolic links)"
    os.symlink(tmp_path / "models" / "self", tmp_path / "models" / "self")
    with pytest.raises(UnknownModel, match=r"self: a symlink loop \(too many levels of symbolic links\)$"):
        select_models(Catalog.load(), [str(tmp_path / "models" / "self")])


def test_minerva_models_list_reports_a_symlink_loop_in_one_line(tmp_path: Path) -> None:
    artifact_dir = write_safetensors_dir(tmp_path / "models" / "smollm2-135m" / "safetensors", {"model_type": "llama"})
    os.symlink("loop2", artifact_dir / "loop1")
    os.symlink("loop1", artifact_dir / "loop2")
    ran = run_cli("models", "list", env={"MINERVA_MODEL_DIR": str(tmp_path / "models")})
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr
    assert f"{artifact_dir / 'loop1'}: a symlink loop (too many levels of symbolic links)" in ran.stdout


def test_a_300_character_file_name_is_one_line_everywhere(tmp_path: Path) -> None:
    long_name = str(tmp_path / ("a" * 300 + ".gguf"))
    with pytest.raises(FormatError) as info:
        verify(long_name)
    assert not isinstance(info.value, CheckerBug)
    assert str(info.value) == f"{long_name}: file name too long"
    with pytest.raises(UnknownModel, match=r"a\.gguf: file name too long$"):
        select_models(Catalog.load(), [long_name])
    checked = run_cli("verify", long_name)
    assert (checked.returncode, checked.stdout) == (1, f"{long_name}: file name too long\n")
    assert CHECKER_BUG not in checked.stdout
    bench = run_cli("bench", "--model", long_name, "--backend", "llama_cpp", "--scenario", "short")
    assert bench.returncode != 0 and "Traceback" not in bench.stderr
    assert bench.stderr.endswith(f"{long_name}: file name too long\n")
    assert bench.stderr.count("\n") == 1


def test_every_error_of_the_model_modules_is_a_minerva_error(tmp_path: Path) -> None:
    # A directory standing where a file is expected, and a file where a directory is.
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(MinervaError):
        select_models(Catalog.load(), [str(tmp_path / "dir.gguf")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(FormatError, match=r"not a directory$"):
        verify(tmp_path / "file" / "below.gguf")
