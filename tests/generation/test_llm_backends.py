"""The two LLM backends with real models: llama.cpp in process, and an OpenAI-compatible server.

In process: the default reader (Qwen2.5-Coder-1.5B-Instruct, assembled from its PyPI parts)
and the small Gemma 3 270M base model. The server is llama-cpp-python's own
(``python -m llama_cpp.server``) serving Gemma 3 270M on a free loopback port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ragserve.context.assembler import ContextAssembler
from ragserve.errors import LLMUnavailableError, ModelNotFoundError
from ragserve.generation import LlamaCppGenerator, OpenAICompatibleGenerator
from ragserve.runtime.models import resolve_gguf_model

TEXT = "The Eiffel Tower is 330 metres tall. It was completed in 1889 in Paris."


@pytest.fixture
def eiffel(make_hit):  # type: ignore[no-untyped-def]
    """The Eiffel source, assembled with a given generator's token counter."""
    hit = make_hit(TEXT, doc_id="c", source="eiffel.txt")
    return lambda count: ContextAssembler(count, context_window=2048).assemble(
        "How tall is it?", [hit]
    )


@pytest.fixture(scope="module")
def llama() -> LlamaCppGenerator:
    gen = LlamaCppGenerator("builtin:gemma-3-270m", n_ctx=2048, max_tokens=24)
    gen.warm_up()
    return gen


@pytest.fixture(scope="module")
def reader() -> LlamaCppGenerator:
    gen = LlamaCppGenerator(n_ctx=2048, max_tokens=32)
    gen.warm_up()
    return gen


def test_default_reader_answers_briefly_and_cites(reader: LlamaCppGenerator, eiffel) -> None:  # type: ignore[no-untyped-def]
    assert reader.prompt_style == "chat" and reader.system_role
    answer = "".join(
        reader.stream("How tall is the Eiffel Tower?", eiffel(reader.count_tokens), [])
    )
    assert "330" in answer and "[1]" in answer
    assert len(answer.split()) <= 12, f"a short answer, not a paragraph: {answer!r}"


def test_a_fact_the_source_does_not_hold_never_reaches_the_user(
    reader: LlamaCppGenerator,
    eiffel,  # type: ignore[no-untyped-def]
) -> None:
    """The 1.5B model sometimes answers from memory ("Gustave Eiffel") although asked not to;
    either it says it does not know, or the grounding check refuses what no source holds."""
    from ragserve.generation.citations import is_refusal
    from ragserve.grounding.evidence import ground

    context = eiffel(reader.count_tokens)
    question = "Who was the Eiffel Tower's architect?"
    answer = "".join(reader.stream(question, context, []))
    assert is_refusal(answer) or ground(answer, context.texts, [], question=question) is None, (
        answer
    )


def test_llama_streams_tokens_from_the_real_model(llama: LlamaCppGenerator, eiffel) -> None:  # type: ignore[no-untyped-def]
    pieces = list(llama.stream("How tall is the Eiffel Tower?", eiffel(llama.count_tokens), []))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert llama.count_tokens("hello world") >= 2


def test_shipped_base_model_answers_from_a_completion_prompt_and_is_cited(
    llama: LlamaCppGenerator,
    eiffel,  # type: ignore[no-untyped-def]
) -> None:
    # The shipped GGUF has no chat template: it is prompted as a document to continue, and
    # its answer is credited to the source that contains it.
    assert llama.prompt_style == "completion"
    answer = "".join(llama.stream("How tall is the Eiffel Tower?", eiffel(llama.count_tokens), []))
    assert "330" in answer
    assert answer.rstrip().endswith("[1]")


def test_chat_prompts_stay_available_for_the_base_model(eiffel) -> None:  # type: ignore[no-untyped-def]
    gen = LlamaCppGenerator("builtin:gemma-3-270m", n_ctx=2048, max_tokens=8, prompt_style="chat")
    gen.warm_up()
    assert gen.prompt_style == "chat" and gen._llm.chat_format == "gemma"
    assert "".join(gen.stream("How tall is it?", eiffel(gen.count_tokens), [])).strip()


@pytest.mark.fast
def test_missing_gguf_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelNotFoundError, match="not found"):
        LlamaCppGenerator(str(tmp_path / "nope.gguf")).warm_up()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(resolve_gguf_model("builtin:gemma-3-270m")),
            "--chat_format",
            "gemma",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("llama_cpp.server exited early")
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("llama_cpp.server did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_compatible_backend_streams_from_a_real_server(llama_server: str, eiffel) -> None:  # type: ignore[no-untyped-def]
    gen = OpenAICompatibleGenerator(llama_server, "gemma", timeout_s=60, max_tokens=24)
    pieces = list(gen.stream("How tall is the Eiffel Tower?", eiffel(gen.count_tokens), []))
    assert len(pieces) > 1 and "".join(pieces).strip()


@pytest.mark.fast
def test_unreachable_server_is_llm_unavailable(eiffel) -> None:  # type: ignore[no-untyped-def]
    gen = OpenAICompatibleGenerator(f"http://127.0.0.1:{_free_port()}/v1", "m", timeout_s=2)
    with pytest.raises(LLMUnavailableError, match="Cannot reach"):
        list(gen.stream("q", eiffel(gen.count_tokens), []))


def test_a_context_window_past_the_readers_training_is_an_error_before_any_load() -> None:
    """The default reader was trained on 32768 tokens: 65536 is refused naming the setting,
    before llama.cpp allocates a KV cache for it (issue 35, bug 7)."""
    from ragserve.config import SettingsError
    from ragserve.generation.llama import gguf_context_length

    assert gguf_context_length(resolve_gguf_model("builtin:qwen2.5-coder-1.5b-instruct")) == 32768
    gen = LlamaCppGenerator(n_ctx=65536)
    with pytest.raises(SettingsError, match=r"llm_context_window is 65536.*32768"):
        gen.warm_up()
    assert gen._llm is None


def test_a_context_window_past_8192_reaches_llama_cpp() -> None:
    """The builder no longer caps it at 8192 (issue 35, bug 7): the model gets what is asked."""
    from ragserve.config import Settings
    from ragserve.generation import build_generator

    settings = Settings(generator="llama", llm_model_path="builtin:gemma-3-270m")
    settings.generation.llm_context_window = 12288
    gen = build_generator(settings)
    gen.warm_up()
    assert gen.context_window == 12288 and gen._llm.n_ctx() >= 12288  # type: ignore[attr-defined]
