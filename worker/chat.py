"""Chat messages: the checks on a list of ``{role, content}`` messages and their rendering with a
model's chat template, shared by native ``generate`` jobs (``messages_field``) and the OpenAI
chat completions endpoint.

Imports: ``barge`` only; never ``api`` or ``cli``.
"""

from __future__ import annotations

from typing import Any

from barge.errors import describe

CHAT_ROLES = ("system", "developer", "user", "assistant")


class MessagesError(ValueError):
    """Messages that cannot be rendered: what is wrong, and where (``messages[i].content``)."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message)
        self.message = message
        self.param = param


def parse_messages(value: Any, name: str = "messages") -> list[dict[str, str]]:
    """The messages as ``[{role, content}]`` with text content (a list of text parts is
    joined; ``developer`` is rendered as ``system``)."""
    if not isinstance(value, list) or not value:
        raise MessagesError(f"{name} must be a non-empty list", name)
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise MessagesError(
                f"{name}[{i}] must be an object with a role of {', '.join(CHAT_ROLES)}",
                f"{name}[{i}].role",
            )
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise MessagesError(
                        f"{name}[{i}].content: only text parts are supported",
                        f"{name}[{i}].content",
                    )
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        if not isinstance(content, str):
            raise MessagesError(f"{name}[{i}].content must be a string", f"{name}[{i}].content")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": content})
    return out


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Any, messages: list[dict[str, str]], name: str = "messages") -> str:
    """The prompt the model's chat template makes of ``messages``, ending where the assistant's
    reply begins. The template's text already holds the special tokens it wants: tokenize it
    with ``add_special_tokens=False``."""
    if not has_template(tokenizer):
        raise MessagesError("this model has no chat template (chat_template.jinja)", name)
    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:
        raise MessagesError(f"{name}: the chat template failed: {describe(exc)}", name) from None
    return str(prompt)
