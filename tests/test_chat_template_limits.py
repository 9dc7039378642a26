"""Issue 15, breaks 6 and 7: a chat template is bounded in time and memory, whatever it does and
whichever thread renders it.

Each adversarial template renders in a fresh Python process (``render_elsewhere``) with a 2 s
limit, so a template that would run for minutes, or fill memory, fails the test instead of
hanging it or taking the test session's memory; that process reports the error, the time, its
own peak RSS (the parent's) and that of its reaped children (the renderer's).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_minerva.models import chat_template
from pytest_minerva.models.chat_template import ChatTemplateError, render_chat_template

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 2.0
#: What a slow, loaded machine may add to the limit before the error arrives.
SLACK_S = 10.0
#: The most the test process waits for ``render_elsewhere``: the limit, the slack and two interpreter starts.
HANG_S = LIMIT_S + SLACK_S + 20.0
#: The most the parent's peak RSS may grow while a hostile template renders.
PARENT_GROWTH_KIB = 32 << 10
CHAT = [{"role": "user", "content": "hi"}]
ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
MEMORY = "rendering needed more than"
TIME = f"rendering took more than {LIMIT_S:g} s"
ON_LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory limit needs Linux")

RENDER_SCRIPT = """
import json, resource, sys, threading, time
from pytest_minerva.models import chat_template
chat_template.MAX_SECONDS = float(sys.argv[2])
chat = [{"role": "user", "content": "hi"}]
assert chat_template.render_chat_template("{{ messages[0].content }}", chat) == "hi"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome = {}
def render():
    start = time.monotonic()
    try:
        outcome["text"] = chat_template.render_chat_template(sys.argv[1], chat, source="evil.gguf")
    except BaseException as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    outcome["seconds"] = time.monotonic() - start
if sys.argv[3] == "thread":
    worker = threading.Thread(target=render)
    worker.start()
    worker.join()
else:
    render()
outcome["parent_growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
outcome["child_peak_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps(outcome))
"""


def render_elsewhere(template: str, *, thread: bool = False) -> dict[str, Any]:
    """Render ``template`` in a new process with a :data:`LIMIT_S` limit; what it reported."""
    command = [sys.executable, "-c", RENDER_SCRIPT, template, str(LIMIT_S), "thread" if thread else "main"]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rendering did not end within {HANG_S:g} s with a {LIMIT_S:g} s limit")
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.splitlines()[-1]))


def assert_one_line_error(outcome: dict[str, Any], problem: str) -> None:
    assert "text" not in outcome, f"rendered instead of failing: {outcome['text'][:100]!r}"
    error = outcome["error"]
    assert error.startswith("ChatTemplateError: evil.gguf: "), error
    assert problem in error
    assert len(error.splitlines()) == 1
    assert outcome["seconds"] < LIMIT_S + SLACK_S


HOSTILE = {
    "nested list comparison": (
        "{% set M = [[0] * 1000] * 1000 %}{% set L = [[0] * 1000] * 1000 %}"
        "{{ [[M] * 1000] * 100 == [[L] * 1000] * 100 }}",
        TIME,
    ),
    "string doubled 28 times": (
        "{% set ns = namespace(s='a') %}{% for i in range(28) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
        "{{ ns.s | length }}",
        MEMORY,
    ),
    "center(3e8)": ("{{ 'a' | center(300000000) }}", MEMORY),
    "%0300000000d": ("{{ '%0300000000d' | format(1) }}", MEMORY),
    "tojson(indent=3e8)": ("{{ messages | tojson(indent=300000000) }}", MEMORY),
    "replace explosion": ("{{ ('a' * 10**6) | replace('a', 'a' * 10**6) }}", MEMORY),
}


@ON_LINUX
@pytest.mark.parametrize(("template", "problem"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_templates_end_in_one_line_within_the_limit(template: str, problem: str) -> None:
    outcome = render_elsewhere(template)
    assert_one_line_error(outcome, problem)
    assert outcome["parent_growth_kib"] < PARENT_GROWTH_KIB
    assert outcome["child_peak_kib"] < (chat_template.RENDER_MEMORY_BYTES + (64 << 20)) >> 10


@pytest.mark.parametrize(
    "template", [ENDLESS, HOSTILE["nested list comparison"][0]], ids=["python loop", "one C-level comparison"]
)
def test_rendering_off_the_main_thread_is_bounded_too(template: str) -> None:
    assert_one_line_error(render_elsewhere(template, thread=True), TIME)


@pytest.mark.parametrize("poll", [True, False], ids=["polled pipe", "timer thread"])
def test_a_killed_renderer_is_replaced(monkeypatch: pytest.MonkeyPatch, poll: bool) -> None:
    """Both ways of keeping the deadline: polling (POSIX) and a timer that kills the child (Windows)."""
    monkeypatch.setattr(chat_template, "POLL_PIPES", poll)
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 1.0)
    assert render_chat_template("{{ messages[0].content }}", CHAT) == "hi"
    first = chat_template.RENDERER.pid
    with pytest.raises(ChatTemplateError, match=r"^chat template: rendering took more than 1 s$"):
        render_chat_template(ENDLESS, CHAT)
    assert chat_template.RENDERER.pid is None
    assert render_chat_template("{{ messages[0].content }}!", CHAT) == "hi!"
    assert chat_template.RENDERER.pid not in (None, first)


@ON_LINUX
def test_the_renderer_survives_template_errors_and_is_replaced_after_running_out_of_memory() -> None:
    render_chat_template("{{ 1 }}", CHAT)
    first = chat_template.RENDERER.pid
    with pytest.raises(ChatTemplateError, match="not a valid Jinja template"):
        render_chat_template("{% for %}", CHAT)
    assert chat_template.RENDERER.pid == first
    with pytest.raises(ChatTemplateError, match=rf"^t: {MEMORY} {chat_template.RENDER_MEMORY_BYTES >> 20} MiB"):
        render_chat_template(HOSTILE["center(3e8)"][0], CHAT, source="t")
    assert render_chat_template("{{ 2 }}", CHAT) == "2"
    assert chat_template.RENDERER.pid != first


def test_normal_templates_render_as_the_sandbox_does_in_process() -> None:
    from pytest_minerva.models.template_worker import sandbox_environment

    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Ünïcode 😀, a tab\t, a newline\n and a lone \x01"},
        {"role": "assistant", "content": "4"},
    ]
    templates = [
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "{{ bos_token }}{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{{ m | tojson }}{% endfor %}{{ ns.n }}{{ dict(a=1) | tojson }}{{ tools | length }}{{ eos_token }}",
    ]
    context = {"messages": chat, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"}
    for template in templates:
        expected = sandbox_environment().from_string(template).render(**context, tools=[{"name": "f"}])
        assert (
            render_chat_template(template, chat, bos_token="<s>", eos_token="</s>", tools=[{"name": "f"}]) == expected
        )


def test_a_prompt_near_the_size_limit_fits_in_time_memory_and_reply() -> None:
    content = "😀é\x01a" * ((chat_template.MAX_OUTPUT_CHARS - 100) // 4)
    rendered = render_chat_template("[{{ messages[0].content }}]", [{"role": "user", "content": content}])
    assert rendered == f"[{content}]"


def test_renders_from_many_threads_at_once_each_get_their_own_prompt() -> None:
    results: dict[int, list[str]] = {}

    def render(n: int) -> None:
        results[n] = [
            render_chat_template("{{ messages[0].content }}", [{"role": "user", "content": f"{n}:{i}"}])
            for i in range(20)
        ]

    threads = [threading.Thread(target=render, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: [f"{n}:{i}" for i in range(20)] for n in range(8)}


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")
def test_the_renderer_inherits_no_secret_and_no_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        chat_template.RENDERER.close()
        render_chat_template("{{ 1 }}", CHAT)
        pid = chat_template.RENDERER.pid
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(b"hf_secret" in entry for entry in environ)
        assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
    finally:
        os.close(read_end)
        os.close(write_end)
        chat_template.RENDERER.close()


def kill_once_busy(pid: int, signum: signal.Signals) -> None:
    """Send ``signum`` to ``pid`` once it is running (rendering), not sleeping on its stdin."""
    deadline = time.monotonic() + SLACK_S
    while time.monotonic() < deadline and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "R":
        time.sleep(0.02)
    os.kill(pid, signum)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    ("signum", "problem"),
    [
        ("SIGKILL", "the chat-template renderer died while rendering: it was killed by signal SIGKILL"),
        ("SIGXCPU", "rendering used more than 30 s of CPU time"),
    ],
    ids=["killed", "cpu limit"],
)
def test_a_renderer_that_dies_gives_one_line(monkeypatch: pytest.MonkeyPatch, signum: str, problem: str) -> None:
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 30.0)
    render_chat_template("{{ 1 }}", CHAT)
    pid = chat_template.RENDERER.pid
    assert pid is not None
    killer = threading.Thread(target=kill_once_busy, args=(pid, signal.Signals[signum]))
    killer.start()
    started = time.monotonic()
    with pytest.raises(ChatTemplateError) as info:
        render_chat_template(ENDLESS, CHAT, source="m.gguf")
    killer.join()
    assert time.monotonic() - started < SLACK_S
    assert str(info.value).startswith(f"m.gguf: {problem}")
    assert len(str(info.value).splitlines()) == 1


ORPHAN_SCRIPT = """
import os, signal, sys, threading, time
from pytest_minerva.models import chat_template
chat_template.MAX_SECONDS = float(sys.argv[1])
chat_template.render_chat_template("{{ 1 }}", [])
print(chat_template.RENDERER.pid, flush=True)
if sys.argv[2] == "rendering":
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    threading.Thread(target=chat_template.render_chat_template, args=(endless, []), daemon=True).start()
    time.sleep(0.5)
os.kill(os.getpid(), signal.SIGKILL)
"""


def process_ended(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("state", ["idle", "rendering"])
def test_the_renderer_ends_with_its_parent(state: str) -> None:
    """Idle, it sees its stdin close; rendering, the kernel's CPU-time limit ends it."""
    command = [sys.executable, "-c", ORPHAN_SCRIPT, str(LIMIT_S), state]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + LIMIT_S + SLACK_S
    while not process_ended(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_ended(pid)
