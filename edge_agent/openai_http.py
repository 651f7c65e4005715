"""An OpenAI-compatible HTTP endpoint on the edge agent, so apps written against the official
`openai` package talk to the cascade unchanged: `/v1/models`, `/v1/completions`,
`/v1/chat/completions`, with server-sent events when `stream` is true.

Every answer says which side produced it: the `x-edgecascade-served-by` header (non-streaming)
and an `edgecascade` object (route, finish reason, status, token counts, signals) in the body or
in the last streamed chunk. The OpenAI protocol cannot withdraw streamed text, so when streaming
the edge's tokens are held back until the edge has decided to answer (the edge is the fast
side); after a deferral the cloud's tokens stream as they arrive.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from aiohttp import web

from edge_agent.llm_cascade import LLMCascade
from protos import edgecascade_pb2 as pb
from shared.errors import EdgecascadeError, InvalidInputError, ModelNotFoundError
from shared.llm_request import GenerationRequest, validated
from shared.proto_convert import ROUTE_FROM_PROTO

log = logging.getLogger(__name__)
SERVED_BY_HEADER = "x-edgecascade-served-by"
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "DEADLINE_EXCEEDED": 504,
               "UNAVAILABLE": 503, "FAILED_PRECONDITION": 400}
FINISH_TO_OPENAI = {"eos": "stop", "stop": "stop", "length": "length"}


class OpenAIEndpoint:
    def __init__(self, llm: LLMCascade, *, default_max_tokens: int = 256, default_timeout_s: float = 60.0) -> None:
        self.llm = llm
        self.default_max_tokens = default_max_tokens
        self.default_timeout_s = default_timeout_s
        self.chat_template = _chat_template(llm.model.model_dir)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EdgecascadeError as exc:
            status = HTTP_STATUS.get(exc.code.name, 500)
            kind = "invalid_request_error" if status == 400 else type(exc).__name__
            return web.json_response({"error": {"message": str(exc), "type": kind, "param": None, "code": None}},
                                     status=status)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.llm.model.name, "object": "model", "created": 0, "owned_by": "edgecascade"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidInputError("prompt must be a string (one prompt per request)")
        return await self._answer(request, body, prompt, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidInputError("messages must be a non-empty list")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                    or message.get("role") not in ("system", "user", "assistant"):
                raise InvalidInputError("each message needs a role (system, user, assistant) and string content")
        return await self._answer(request, body, self.render_chat(messages), chat=True)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The checkpoint's own chat template when it has one (rendered with jinja2), else a plain one."""
        if self.chat_template is not None:
            return self.chat_template.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:"

    async def _answer(self, request: web.Request, body: dict[str, Any], prompt: str, *, chat: bool) -> web.StreamResponse:
        model = body.get("model") or ""
        if model and model != self.llm.model.name:
            raise ModelNotFoundError(f"unknown model {model!r}; this agent serves {self.llm.model.name!r}")
        generation = validated(_generation_request(body, prompt, self.default_max_tokens),
                               max_new_tokens_limit=self.llm.model.max_new_tokens_limit)
        request_id = ("chatcmpl-" if chat else "cmpl-") + os.urandom(12).hex()
        deadline_s = time.monotonic() + self.default_timeout_s
        chunks = self.llm.stream(generation, deadline_s=deadline_s, request_id=request_id)
        if body.get("stream"):
            return await self._stream(request, chunks, request_id, chat)
        text, summary = "", None
        async for chunk in chunks:
            if chunk.HasField("summary"):
                summary = chunk.summary
            else:
                text = chunk.text if chunk.restart else text + chunk.text
        reply = _reply(request_id, self.llm.model.name, chat, text, summary)
        return web.json_response(reply, headers={SERVED_BY_HEADER: ROUTE_FROM_PROTO.get(summary.served_by, "unknown")})

    async def _stream(self, request: web.Request, chunks, request_id: str, chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        name, held, first = self.llm.model.name, [], True
        async for chunk in chunks:
            if chunk.HasField("summary"):
                for text in held:
                    await _send(response, _delta(request_id, name, chat, text, None, first))
                    first = False
                final = _delta(request_id, name, chat, "", FINISH_TO_OPENAI.get(chunk.summary.finish_reason,
                                                                                 chunk.summary.finish_reason), first)
                final["edgecascade"] = _summary_json(chunk.summary)
                await _send(response, final)
                break
            if chunk.restart:
                held = []
                continue
            if chunk.source == pb.EDGE:
                held.append(chunk.text)   # held until the edge has decided to answer
            elif chunk.text:
                await _send(response, _delta(request_id, name, chat, chunk.text, None, first))
                first = False
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _chat_template(model_dir: Path):
    try:
        config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    template = config.get("chat_template")
    if not isinstance(template, str):
        return None
    try:
        import jinja2
    except ImportError:
        log.warning("the checkpoint has a chat template but jinja2 is not installed: using a plain template")
        return None
    return jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInputError("the request body must be a JSON object")
    return body


def _generation_request(body: dict[str, Any], prompt: str, default_max_tokens: int) -> GenerationRequest:
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise InvalidInputError("stop must be a string or a list of strings")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or default_max_tokens
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    seed = body.get("seed")
    for name, value in (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p), ("seed", seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidInputError(f"{name} must be a number")
    if body.get("n", 1) != 1:
        raise InvalidInputError("n must be 1")
    return GenerationRequest(prompt=prompt, max_new_tokens=int(max_tokens),
                             temperature=float(1.0 if temperature is None else temperature),
                             top_p=float(1.0 if top_p is None else top_p),
                             seed=None if seed is None else int(seed), stop=tuple(stop))


def _summary_json(summary: pb.GenerateSummary) -> dict[str, Any]:
    return {"served_by": ROUTE_FROM_PROTO.get(summary.served_by, "unknown"), "finish_reason": summary.finish_reason,
            "status": summary.status, "edge_tokens": summary.edge_tokens, "cloud_tokens": summary.cloud_tokens,
            "min_top_prob": summary.edge_signals.min_top_prob,
            "quantile_top_prob": summary.edge_signals.quantile_top_prob,
            "defer_reason": summary.defer_reason, "fallback_reason": summary.fallback_reason}


def _reply(request_id: str, model: str, chat: bool, text: str, summary: Optional[pb.GenerateSummary]) -> dict[str, Any]:
    finish = FINISH_TO_OPENAI.get(summary.finish_reason, summary.finish_reason)
    completion_tokens = summary.cloud_tokens if summary.served_by == pb.CLOUD else summary.edge_tokens
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": request_id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice],
            "usage": {"prompt_tokens": summary.prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": summary.prompt_tokens + completion_tokens},
            "edgecascade": _summary_json(summary)}


def _delta(request_id: str, model: str, chat: bool, text: str, finish: Optional[str], first: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["delta"] = ({"role": "assistant"} if first else {}) | ({"content": text} if text else {})
    else:
        choice["text"] = text
    return {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice]}


async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())
