#!/usr/bin/env python3
"""Run a GitHub Actions job's ``run:`` steps here, in order, the way a runner would.

    python tools/run_workflow_steps.py .github/workflows/bench-gate.yml --job gate \\
        --event event.json --env ASV_CONFIG=/tmp/project/asv.conf.json --summary summary.md

GitHub can't run here, so this proves a workflow's steps are commands that work, not dead
text. Each ``run:`` step gets the job's env (workflow, job and step ``env:``, ``${{ }}``
expressions evaluated), ``GITHUB_STEP_SUMMARY``, ``GITHUB_OUTPUT``, ``GITHUB_ENV`` and
``GITHUB_PATH`` as files, and the runner's default shell (``bash -e``; ``bash --noprofile
--norc -eo pipefail`` for ``shell: bash``). ``uses:`` steps (actions) are not run: a line
says so. ``if:`` conditions, ``continue-on-error`` and ``timeout-minutes`` are honoured.

Substitutions: ``--matrix KEY=VALUE`` picks the matrix combination; ``--context
PATH=VALUE`` sets any expression context (``vars.X=true``,
``steps.cache.outputs.cache-hit=true`` for a skipped action's output); ``--event FILE`` is
``github.event``; ``--env KEY=VALUE`` overrides an environment variable after the
workflow's own env. Exit status: 0 when every step that ran succeeded, 1 when one failed,
2 for bad usage or a workflow this runner can't evaluate.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.DOTALL)
STATUS_FUNCTIONS = re.compile(r"\b(success|failure|always|cancelled)\s*\(")


class WorkflowError(Exception):
    """A workflow this runner can't run: the message names the file and the problem."""


@dataclass
class StepRecord:
    index: int
    id: str | None
    name: str
    status: str  # success | failure | skipped | uses
    reason: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    continue_on_error: bool = False
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class JobRun:
    workflow: str
    job: str
    matrix: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.status == "failure" and not s.continue_on_error for s in self.steps)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    pattern = re.compile(
        r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>==|!=|<=|>=|&&|\|\||[!<>()\[\],.*])"
        r"|(?P<ident>[A-Za-z_][A-Za-z0-9_-]*))"
    )
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = pattern.match(text, pos)
        if match is None or match.end() == pos:
            raise WorkflowError(f"cannot parse expression {text!r} at {text[pos:]!r}")
        pos = match.end()
        if match.group("str") is not None:
            tokens.append(("value", match.group("str")[1:-1].replace("''", "'")))
        elif match.group("num") is not None:
            number = float(match.group("num"))
            tokens.append(("value", int(number) if number.is_integer() else number))
        elif match.group("op") is not None:
            tokens.append(("op", match.group("op")))
        else:
            ident = match.group("ident")
            literals = {"true": True, "false": False, "null": None}
            tokens.append(("value", literals[ident]) if ident in literals else ("ident", ident))
    return tokens


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", 0.0)


def _loose_equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if isinstance(a, bool | int | float) or isinstance(b, bool | int | float):
        try:
            return float(a if a is not None else 0) == float(b if b is not None else 0)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def _to_string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


class Expression:
    """A GitHub Actions expression (``${{ ... }}`` contents) evaluated against contexts."""

    def __init__(self, text: str, contexts: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]):
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.contexts = contexts
        self.functions = functions

    def evaluate(self) -> Any:
        value = self._or()
        if self.pos != len(self.tokens):
            raise WorkflowError(f"unexpected {self.tokens[self.pos][1]!r} in expression {self.text!r}")
        return value

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, op: str) -> bool:
        token = self._peek()
        if token == ("op", op):
            self.pos += 1
            return True
        return False

    def _or(self) -> Any:
        value = self._and()
        while self._take("||"):
            right = self._and()
            value = value if _truthy(value) else right
        return value

    def _and(self) -> Any:
        value = self._compare()
        while self._take("&&"):
            right = self._compare()
            value = right if _truthy(value) else value
        return value

    def _compare(self) -> Any:
        value = self._unary()
        for op in ("==", "!=", "<=", ">=", "<", ">"):
            if self._take(op):
                right = self._unary()
                if op == "==":
                    return _loose_equal(value, right)
                if op == "!=":
                    return not _loose_equal(value, right)
                try:
                    a, b = float(value), float(right)
                except (TypeError, ValueError):
                    return False
                return {"<=": a <= b, ">=": a >= b, "<": a < b, ">": a > b}[op]
        return value

    def _unary(self) -> Any:
        if self._take("!"):
            return not _truthy(self._unary())
        return self._postfix(self._primary())

    def _primary(self) -> Any:
        token = self._peek()
        if token is None:
            raise WorkflowError(f"expression {self.text!r} ends early")
        self.pos += 1
        kind, value = token
        if kind == "value":
            return value
        if token == ("op", "("):
            inner = self._or()
            if not self._take(")"):
                raise WorkflowError(f"missing ')' in expression {self.text!r}")
            return inner
        if kind == "ident":
            if self._take("("):
                args = []
                if not self._take(")"):
                    args.append(self._or())
                    while self._take(","):
                        args.append(self._or())
                    if not self._take(")"):
                        raise WorkflowError(f"missing ')' after {value}( in expression {self.text!r}")
                function = self.functions.get(value.lower())
                if function is None:
                    raise WorkflowError(f"function {value}() is not supported here (expression {self.text!r})")
                return function(*args)
            if value not in self.contexts:
                raise WorkflowError(
                    f"context {value!r} is unknown here (expression {self.text!r}); "
                    f"set it with --context {value}.KEY=VALUE"
                )
            return self.contexts[value]
        raise WorkflowError(f"unexpected {value!r} in expression {self.text!r}")

    def _postfix(self, value: Any) -> Any:
        while True:
            if self._take("."):
                token = self._peek()
                self.pos += 1
                if token == ("op", "*"):
                    value = list(value.values()) if isinstance(value, dict) else list(value or [])
                    value = _Filter(value)
                elif token is not None and token[0] == "ident":
                    value = _index(value, token[1])
                else:
                    raise WorkflowError(f"bad property access in expression {self.text!r}")
            elif self._take("["):
                key = self._or()
                if not self._take("]"):
                    raise WorkflowError(f"missing ']' in expression {self.text!r}")
                value = _index(value, key)
            else:
                return list(value) if isinstance(value, _Filter) else value


class _Filter(list):
    """The result of ``.*``: property access maps over the items."""


def _index(value: Any, key: Any) -> Any:
    if isinstance(value, _Filter):
        return _Filter(_index(item, key) for item in value)
    if isinstance(value, dict):
        for candidate, item in value.items():
            if str(candidate).lower() == str(key).lower():
                return item
        return None
    if isinstance(value, list) and isinstance(key, int | float):
        return value[int(key)] if 0 <= int(key) < len(value) else None
    return None


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise WorkflowError(f"--context {dotted}: {part} is not an object")
    node[parts[-1]] = value


def _parse_assignments(items: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WorkflowError(f"{option} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _hash_files(root: Path) -> Callable[..., str]:
    def hash_files(*patterns: str) -> str:
        digest = hashlib.sha256()
        matched = False
        for pattern in patterns:
            for path in sorted(root.glob(pattern)):
                if path.is_file():
                    digest.update(hashlib.sha256(path.read_bytes()).digest())
                    matched = True
        return digest.hexdigest() if matched else ""

    return hash_files


def _parse_file_commands(path: Path) -> dict[str, str]:
    """``GITHUB_OUTPUT`` / ``GITHUB_ENV`` syntax: ``key=value`` lines and ``key<<DELIM`` blocks."""
    values: dict[str, str] = {}
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delimiter = line.split("<<", 1)
            block: list[str] = []
            i += 1
            while i < len(lines) and lines[i] != delimiter:
                block.append(lines[i])
                i += 1
            values[key] = "\n".join(block)
        elif "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
        i += 1
    return values


def matrix_combinations(strategy: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every combination a job's ``strategy.matrix`` expands to, with GitHub's include/exclude rules.

    An ``include`` entry extends each original combination whose original values it doesn't
    overwrite; one that extends none becomes a combination of its own.
    """
    matrix = dict((strategy or {}).get("matrix") or {})
    include = list(matrix.pop("include", []) or [])
    exclude = list(matrix.pop("exclude", []) or [])
    keys = list(matrix)
    originals = (
        [dict(zip(keys, values, strict=True)) for values in itertools.product(*(matrix[k] for k in keys))]
        if keys
        else []
    )
    originals = [c for c in originals if not any(all(c.get(k) == v for k, v in ex.items()) for ex in exclude)]
    added: list[dict[str, Any]] = []
    for extra in include:
        targets = [c for c in originals if all(c[k] == v for k, v in extra.items() if k in keys)]
        for combo in targets:
            combo.update({k: v for k, v in extra.items() if k not in keys})
        if not targets:
            added.append(dict(extra))
    return originals + added or [{}]


def select_matrix(job_name: str, strategy: Mapping[str, Any] | None, wanted: Mapping[str, str]) -> dict[str, Any]:
    combos = matrix_combinations(strategy)
    matching = [c for c in combos if all(_to_string(c.get(k)) == v for k, v in wanted.items())]
    if not matching:
        listed = "; ".join(", ".join(f"{k}={_to_string(v)}" for k, v in c.items()) for c in combos)
        raise WorkflowError(f"job {job_name}: no matrix combination has {dict(wanted)}; it has: {listed}")
    return matching[0]


def load_workflow(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise WorkflowError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
        raise WorkflowError(f"{path}: not a workflow (no jobs: mapping)")
    return data


def _step_label(index: int, step: Mapping[str, Any]) -> str:
    if step.get("name"):
        return str(step["name"])
    if step.get("uses"):
        return f"uses {step['uses']}"
    first = str(step.get("run", "")).strip().splitlines()
    return f"Run {first[0]}" if first else f"step {index}"


def _matches(selector: str, index: int, step: Mapping[str, Any]) -> bool:
    return selector in (str(index), step.get("id"), step.get("name"))


class LocalRunner:
    """Runs one job of a workflow on this machine."""

    def __init__(
        self,
        workflow_path: Path,
        job: str,
        *,
        workdir: Path,
        matrix: Mapping[str, str] | None = None,
        context: Mapping[str, str] | None = None,
        event: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        summary: Path | None = None,
        temp: Path | None = None,
        out: Any = None,
    ) -> None:
        self.path = workflow_path
        self.workflow = load_workflow(workflow_path)
        jobs = self.workflow["jobs"]
        if job not in jobs:
            raise WorkflowError(f"{workflow_path}: no job {job!r}; jobs: {', '.join(jobs)}")
        self.job_name = job
        self.job = jobs[job]
        self.workdir = workdir.resolve()
        self.env_overrides = dict(env or {})
        self.out = out or sys.stdout
        self.temp = Path(temp).resolve() if temp else Path(tempfile.mkdtemp(prefix="workflow-steps-"))
        self.temp.mkdir(parents=True, exist_ok=True)
        self.summary = summary or self.temp / "step_summary.md"
        self.summary.parent.mkdir(parents=True, exist_ok=True)
        self.summary.touch()
        self.step_outputs: dict[str, dict[str, Any]] = {}
        self.job_status = "success"
        self.path_prefix: list[str] = []
        self.added_env: dict[str, str] = {}
        self.contexts = self._base_contexts(event)
        for dotted, value in (context or {}).items():
            _set_path(self.contexts, dotted, value)
        strategy = dict(self.job.get("strategy") or {})
        if isinstance(strategy.get("matrix"), str):
            whole = EXPRESSION.fullmatch(strategy["matrix"].strip())
            if whole is None:
                raise WorkflowError(f"{workflow_path}: job {job}: matrix {strategy['matrix']!r} is not an expression")
            strategy["matrix"] = self.evaluate(whole.group(1))
        self.matrix = select_matrix(job, strategy, matrix or {})
        self.contexts["matrix"] = self.matrix

    def _base_contexts(self, event: Mapping[str, Any] | None) -> dict[str, Any]:
        system = platform.system()
        runner_os = {"Darwin": "macOS", "Windows": "Windows"}.get(system, "Linux")
        arch = {"x86_64": "X64", "amd64": "X64", "arm64": "ARM64", "aarch64": "ARM64"}.get(
            platform.machine().lower(), platform.machine()
        )
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=self.workdir, capture_output=True, text=True, check=False
        ).stdout.strip()
        github = {
            "workspace": str(self.workdir),
            "sha": sha,
            "event_name": "pull_request" if event and "pull_request" in event else "push",
            "event": dict(event or {}),
            "repository": "local/" + self.workdir.name,
            "run_id": "0",
            "run_attempt": "1",
            "job": self.job_name,
            "ref": "refs/heads/main",
            "ref_name": "main",
            "server_url": "http://localhost",
            "workflow": str(self.workflow.get("name", self.path.name)),
        }
        return {
            "github": github,
            "runner": {"os": runner_os, "arch": arch, "temp": str(self.temp), "name": "local"},
            "matrix": {},
            "strategy": {"fail-fast": True, "job-index": 0, "job-total": 1},
            "vars": {},
            "secrets": {},
            "inputs": {},
            "needs": {},
            "job": {"status": "success"},
            "steps": self.step_outputs,
            "env": {},
        }

    def _functions(self) -> dict[str, Callable[..., Any]]:
        def contains(haystack: Any, needle: Any) -> bool:
            if isinstance(haystack, list):
                return any(_loose_equal(item, needle) for item in haystack)
            return _to_string(needle).lower() in _to_string(haystack).lower()

        def format_(template: str, *args: Any) -> str:
            return re.sub(r"\{(\d+)\}", lambda m: _to_string(args[int(m.group(1))]), template)

        return {
            "success": lambda: self.job_status == "success",
            "failure": lambda: self.job_status == "failure",
            "always": lambda: True,
            "cancelled": lambda: False,
            "contains": contains,
            "startswith": lambda a, b: _to_string(a).lower().startswith(_to_string(b).lower()),
            "endswith": lambda a, b: _to_string(a).lower().endswith(_to_string(b).lower()),
            "format": format_,
            "join": lambda items, sep=",": _to_string(sep).join(_to_string(i) for i in (items or [])),
            "tojson": lambda value: json.dumps(value, indent=2),
            "fromjson": lambda text: json.loads(_to_string(text)),
            "hashfiles": _hash_files(self.workdir),
        }

    def evaluate(self, text: str) -> Any:
        return Expression(text, self.contexts, self._functions()).evaluate()

    def substitute(self, value: Any) -> str:
        return EXPRESSION.sub(lambda m: _to_string(self.evaluate(m.group(1))), _to_string(value))

    def condition(self, raw: Any) -> bool:
        if raw is None:
            return self.job_status == "success"
        if isinstance(raw, bool):
            return raw and self.job_status == "success"
        text = str(raw).strip()
        whole = EXPRESSION.fullmatch(text)
        text = whole.group(1) if whole else text
        if not STATUS_FUNCTIONS.search(text):
            text = f"success() && ({text})"
        return _truthy(self.evaluate(text))

    def _env_for(self, step: Mapping[str, Any], files: Mapping[str, Path]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "CI": "true",
                "GITHUB_WORKSPACE": str(self.workdir),
                "GITHUB_SHA": str(self.contexts["github"]["sha"]),
                "GITHUB_EVENT_NAME": str(self.contexts["github"]["event_name"]),
                "GITHUB_REF": str(self.contexts["github"]["ref"]),
                "RUNNER_OS": str(self.contexts["runner"]["os"]),
                "RUNNER_ARCH": str(self.contexts["runner"]["arch"]),
                "RUNNER_TEMP": str(self.temp),
                "GITHUB_STEP_SUMMARY": str(self.summary),
            }
        )
        event_path = self.temp / "event.json"  # GITHUB_EVENT_PATH
        event_path.write_text(json.dumps(self.contexts["github"]["event"]), encoding="utf-8")
        env["GITHUB_EVENT_PATH"] = str(event_path)
        env.update(self.added_env)
        declared: dict[str, str] = {}
        for scope in (self.workflow.get("env"), self.job.get("env"), step.get("env")):
            for key, value in (scope or {}).items():
                self.contexts["env"] = {**env, **declared}
                declared[key] = self.substitute(value)
        env.update(declared)
        env.update(self.env_overrides)
        env.update({name: str(path) for name, path in files.items()})
        if self.path_prefix:
            env["PATH"] = os.pathsep.join([*reversed(self.path_prefix), env.get("PATH", "")])
        return env

    def _shell(self, step: Mapping[str, Any], script: Path) -> list[str]:
        defaults = ((self.job.get("defaults") or {}).get("run") or {}) or (
            (self.workflow.get("defaults") or {}).get("run") or {}
        )
        shell = step.get("shell") or defaults.get("shell")
        if shell is None:
            return ["bash", "-e", str(script)]
        if shell == "bash":
            return ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)]
        if shell == "sh":
            return ["sh", "-e", str(script)]
        if shell == "python":
            return [sys.executable, str(script)]
        if "{0}" in shell:
            return [part.replace("{0}", str(script)) for part in shell.split()]
        raise WorkflowError(f"{self.path}: shell {shell!r} is not supported locally")

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self, only: list[str] | None = None, skip: list[str] | None = None, ignore_job_if: bool = False) -> JobRun:
        record = JobRun(str(self.path), self.job_name, dict(self.matrix))
        job_if = self.job.get("if")
        if job_if is not None and not ignore_job_if and not self.condition(job_if):
            self._say(f"job {self.job_name}: skipped, its if: {job_if!r} is false here")
            return record
        steps = self.job.get("steps") or []
        for index, step in enumerate(steps, start=1):
            label = _step_label(index, step)
            step_id = step.get("id")
            entry = StepRecord(index, step_id, label, "skipped", continue_on_error=bool(step.get("continue-on-error")))
            record.steps.append(entry)
            if only and not any(_matches(s, index, step) for s in only):
                entry.reason = "not selected"
                self._say(f"[{index}] {label}: not selected")
                continue
            if skip and any(_matches(s, index, step) for s in skip):
                entry.reason = "skipped by --skip"
                self._say(f"[{index}] {label}: skipped by --skip")
                continue
            if step.get("uses"):
                entry.status, entry.reason = "uses", f"uses: {step['uses']} (an action; not run locally)"
                self._say(f"[{index}] {label}: not run locally (an action)")
                continue
            self.contexts["env"] = self._env_for(step, {})
            if not self.condition(step.get("if")):
                entry.reason = f"if: {step.get('if')!r} is false"
                self._say(f"[{index}] {label}: skipped, {entry.reason}")
                if step_id:
                    self.step_outputs[step_id] = {"outputs": {}, "outcome": "skipped", "conclusion": "skipped"}
                continue
            self._run_step(index, step, entry)
            if entry.status == "failure" and not entry.continue_on_error:
                self.job_status = "failure"
                self.contexts["job"]["status"] = "failure"
        outcome = "failed" if record.failed else "passed"
        ran = sum(1 for s in record.steps if s.status in ("success", "failure"))
        self._say(f"job {self.job_name}: {outcome}; {ran} run steps, step summary in {self.summary}")
        return record

    def _run_step(self, index: int, step: Mapping[str, Any], entry: StepRecord) -> None:
        step_dir = Path(tempfile.mkdtemp(prefix=f"step-{index}-", dir=self.temp))
        files = {name: step_dir / name.lower() for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH")}
        for path in files.values():
            path.touch()
        env = self._env_for(step, files)
        self.contexts["env"] = env
        script_text = self.substitute(step["run"])
        script = step_dir / ("script.py" if step.get("shell") == "python" else "script.sh")
        script.write_text(script_text, encoding="utf-8")
        cwd = self.workdir / self.substitute(step.get("working-directory", "."))
        timeout = float(self.substitute(step.get("timeout-minutes", 0)) or 0) * 60 or None
        self._say(f"[{index}] {entry.name}: running")
        started = time.perf_counter()
        try:
            completed = subprocess.run(self._shell(step, script), cwd=cwd, env=env, timeout=timeout, check=False)
            entry.returncode = completed.returncode
        except subprocess.TimeoutExpired:
            entry.returncode = 124
            entry.reason = f"timed out after {step.get('timeout-minutes')} minutes"
        entry.seconds = round(time.perf_counter() - started, 3)
        entry.status = "success" if entry.returncode == 0 else "failure"
        if entry.status == "failure" and not entry.reason:
            entry.reason = f"exit status {entry.returncode}"
        outputs = _parse_file_commands(files["GITHUB_OUTPUT"])
        entry.outputs = outputs
        self.added_env.update(_parse_file_commands(files["GITHUB_ENV"]))
        self.path_prefix.extend(
            line.strip() for line in files["GITHUB_PATH"].read_text(encoding="utf-8").splitlines() if line.strip()
        )
        if step.get("id"):
            conclusion = "success" if entry.status == "success" or entry.continue_on_error else "failure"
            self.step_outputs[step["id"]] = {"outputs": outputs, "outcome": entry.status, "conclusion": conclusion}
        note = " (continue-on-error)" if entry.status == "failure" and entry.continue_on_error else ""
        self._say(f"[{index}] {entry.name}: {entry.status}{note} in {entry.seconds:.1f}s")


def iter_jobs(workflow: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield from workflow["jobs"].items()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("workflow", type=Path, metavar="WORKFLOW", help="a .github/workflows/*.yml file")
    parser.add_argument("--job", metavar="JOB", help="the job id to run (default: the workflow's only job)")
    parser.add_argument("--matrix", action="append", default=[], metavar="KEY=VALUE", help="pick the matrix entry")
    parser.add_argument(
        "--step", action="append", default=[], metavar="ID", help="run only these steps (id, name or 1-based index)"
    )
    parser.add_argument("--skip", action="append", default=[], metavar="ID", help="do not run these steps")
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="set an expression context value, e.g. vars.X=true",
    )
    parser.add_argument("--event", type=Path, metavar="FILE", help="JSON payload used as github.event")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an environment variable (wins over the workflow's env)",
    )
    parser.add_argument(
        "--workdir", type=Path, metavar="DIR", help="the checkout the steps run in (default: the workflow's repository)"
    )
    parser.add_argument("--summary", type=Path, metavar="FILE", help="GITHUB_STEP_SUMMARY file (default: a temp file)")
    parser.add_argument("--temp", type=Path, metavar="DIR", help="RUNNER_TEMP / runner.temp (default: a new temp dir)")
    parser.add_argument("--report", type=Path, metavar="FILE", help="write what each step did as JSON")
    parser.add_argument("--ignore-job-if", action="store_true", help="run the job even when its if: is false here")
    parser.add_argument("--list", action="store_true", help="list the jobs, matrix entries and steps, run nothing")
    args = parser.parse_args(argv)
    try:
        workflow = load_workflow(args.workflow)
        if args.list:
            for name, job in iter_jobs(workflow):
                print(f"job {name}")
                matrix = (job.get("strategy") or {}).get("matrix")
                if isinstance(matrix, str):
                    print(f"  matrix {matrix} (evaluated when run: give the context it reads with --context)")
                for combo in [] if isinstance(matrix, str) else matrix_combinations(job.get("strategy")):
                    if combo:
                        print("  matrix " + " ".join(f"{k}={_to_string(v)}" for k, v in combo.items()))
                for index, step in enumerate(job.get("steps") or [], start=1):
                    kind = "uses" if step.get("uses") else "run"
                    print(f"  [{index}] {step.get('id') or '-'}: {_step_label(index, step)} ({kind})")
            return 0
        job_name: str = args.job
        if job_name is None:
            if len(workflow["jobs"]) != 1:
                raise WorkflowError(f"{args.workflow}: has jobs {', '.join(workflow['jobs'])}; pick one with --job")
            job_name = next(iter(workflow["jobs"]))
        resolved = args.workflow.resolve()
        workdir = args.workdir or (
            resolved.parents[2]
            if resolved.parent.name == "workflows" and resolved.parent.parent.name == ".github"
            else Path.cwd()
        )
        event = json.loads(args.event.read_text(encoding="utf-8")) if args.event else None
        runner = LocalRunner(
            args.workflow,
            job_name,
            workdir=workdir,
            matrix=_parse_assignments(args.matrix, "--matrix"),
            context=_parse_assignments(args.context, "--context"),
            event=event,
            env=_parse_assignments(args.env, "--env"),
            summary=args.summary,
            temp=args.temp,
        )
        record = runner.run(only=args.step or None, skip=args.skip or None, ignore_job_if=args.ignore_job_if)
    except (WorkflowError, json.JSONDecodeError, OSError) as exc:
        print(f"run_workflow_steps: {exc}", file=sys.stderr)
        return 2
    if args.report:
        args.report.write_text(
            json.dumps({**asdict(record), "summary": str(runner.summary)}, indent=2) + "\n", encoding="utf-8"
        )
    return 1 if record.failed else 0


if __name__ == "__main__":
    sys.exit(main())
