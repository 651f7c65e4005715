"""A remote cloud LM behind an OpenAI-compatible API (vLLM, SGLang, TGI, llama.cpp's server,
Ollama, `transformers serve`): how the router scales the cloud side past one machine.

It has the host's interface (`load`, `stream`, `generate`, `close`), so the Generate servicer and
the edge see no difference. Text streams as the engine sends it (`/v1/completions`, stream=true).
What it cannot give: token ids and per-token probabilities (its signals only count the chunks
received), and batching, which the engine does itself. Leaving the stream early closes the HTTP
response; the engines named above abort the generation when the client disconnects.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator, Optional, Union

from shared.errors import DeadlineError, InvalidInputError, ModelError, UnavailableError
from shared.llm_request import FINISH_DEADLINE, FINISH_EOS, FINISH_LENGTH, MAX_NEW_TOKENS_LIMIT, GenerationRequest, GenerationResult, SequenceSignals, validated
from shared.llm_sequence import TokenEvent

Event = Union[TokenEvent, GenerationResult]
#: OpenAI finish reasons -> ours ("stop" covers both an end token and a stop sequence there).
FINISH_FROM_OPENAI = {"stop": FINISH_EOS, "length": FINISH_LENGTH}


class RemoteCausalLM:
    def __init__(self, base_url: str, model: str, *, name: Optional[str] = None, api_key: Optional[str] = None,
                 max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT) -> None:
        self.base_url = base_url
        self.model = model
        self.name = name or model
        self.api_key = api_key or os.environ.get("EDGECASCADE_LLM_API_KEY") or "unused"
        self.max_new_tokens_limit = max_new_tokens_limit
        self.ready = False
        self._client: Any = None

    async def load(self) -> None:
        import openai

        self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        if self._client is not None:
            await self._client.close()

    async def stream(self, request: GenerationRequest, timeout_s: float) -> AsyncIterator[Event]:
        import openai

        if not self.ready:
            raise UnavailableError(f"remote model {self.name} is not connected")
        request = validated(request, max_new_tokens_limit=self.max_new_tokens_limit)
        if timeout_s <= 0:
            raise DeadlineError("deadline passed before generation started")
        deadline_s = time.monotonic() + timeout_s
        arguments: dict[str, Any] = dict(model=self.model, prompt=request.prompt, max_tokens=request.max_new_tokens,
                                         temperature=request.temperature, top_p=request.top_p, stream=True,
                                         timeout=timeout_s)
        if request.stop:
            arguments["stop"] = list(request.stop)
        if request.seed is not None:
            arguments["seed"] = request.seed
        try:
            response = await self._client.completions.create(**arguments)
        except openai.BadRequestError as exc:
            raise InvalidInputError(f"remote model {self.name} refused the request: {exc.message}") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise UnavailableError(f"remote model {self.name} at {self.base_url}: {exc}") from None
        except openai.APIStatusError as exc:
            raise ModelError(f"remote model {self.name} answered {exc.status_code}: {exc.message}") from None
        text, chunks, finish = "", 0, FINISH_LENGTH
        iterator = response.__aiter__()
        try:
            while True:
                remaining_s = deadline_s - time.monotonic()
                if remaining_s <= 0:
                    finish = FINISH_DEADLINE
                    break
                try:
                    chunk = await asyncio.wait_for(iterator.__anext__(), remaining_s)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    finish = FINISH_DEADLINE
                    break
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.text:
                    chunks += 1
                    text += choice.text
                    yield TokenEvent(choice.text, None)
                if choice.finish_reason:
                    finish = FINISH_FROM_OPENAI.get(choice.finish_reason, choice.finish_reason)
        except openai.APIError as exc:
            raise ModelError(f"remote model {self.name} failed mid-stream: {exc}") from None
        finally:
            await response.close()  # the engine sees the disconnect and stops
        yield GenerationResult(text=text, token_ids=[], finish_reason=finish, prompt_tokens=0,
                               signals=SequenceSignals(tokens=chunks))

    async def generate(self, request: GenerationRequest, timeout_s: float) -> GenerationResult:
        async for event in self.stream(request, timeout_s):
            if isinstance(event, GenerationResult):
                return event
        raise ModelError("generation ended without a result")
