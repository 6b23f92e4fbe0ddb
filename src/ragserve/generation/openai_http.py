"""Generation through any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp server)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import httpx
from pydantic import SecretStr

from ragserve.context.assembler import AssembledContext
from ragserve.errors import GenerationError, LLMUnavailableError
from ragserve.generation.prompts import build_messages
from ragserve.types import Message

__all__ = ["OpenAICompatibleGenerator"]

log = logging.getLogger("ragserve.generation")


class OpenAICompatibleGenerator:
    name = "openai"
    quotes_sources = False
    max_in_flight = None  # the remote server bounds its own queue

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        *,
        timeout_s: float = 60.0,
        context_window: int = 16384,
        temperature: float = 0.0,
        max_tokens: int = 512,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.context_window = context_window
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._client: httpx.Client | None = None

    def warm_up(self) -> None:
        if self._client is None:
            headers = {"content-type": "application/json"}
            if self._api_key is not None:
                headers["authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            self._client = httpx.Client(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
            )

    def check_capacity(self) -> None:
        return  # no queue of its own: nothing to bound

    def count_tokens(self, text: str) -> int:
        # The server's tokenizer is not reachable offline-cheaply; ~4 characters per token
        # (OpenAI's rule of thumb) rounded up, plus words, keeps budgets on the safe side.
        return max(len(text) // 3, len(re.findall(r"\w+|[^\w\s]", text)))

    def stream(
        self, query: str, context: AssembledContext, history: list[Message]
    ) -> Iterator[str]:
        self.warm_up()
        assert self._client is not None
        body = {
            "model": self.model,
            "messages": build_messages(query, context, history),
            "stream": True,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    detail = response.read().decode("utf-8", "replace")[:300]
                    raise GenerationError(
                        f"The LLM server at {self.base_url} answered HTTP {response.status_code}: "
                        f"{detail}",
                        hint="Check RAGSERVE_OPENAI_MODEL and the API key.",
                    )
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except json.JSONDecodeError:
                        continue
                    choices = event.get("choices") or []
                    if choices:
                        delta = (choices[0].get("delta") or {}).get("content")
                        if delta:
                            yield delta
        except httpx.ConnectError as exc:
            raise LLMUnavailableError(
                f"Cannot reach the LLM server at {self.base_url}.",
                hint="Start it, or fix RAGSERVE_OPENAI_BASE_URL.",
            ) from exc
        except httpx.TimeoutException as exc:
            raise GenerationError(
                f"The LLM server at {self.base_url} timed out after {self.timeout_s:.0f} s.",
                hint="Retry, or raise RAGSERVE_LLM_TIMEOUT_S.",
            ) from exc
        except httpx.HTTPError as exc:
            raise GenerationError(
                f"The LLM server connection failed: {type(exc).__name__}.",
                hint="Retry; check the server's logs.",
            ) from exc
