"""Chat messages as records hold them: the checks on a list of ``{role, content}`` messages and
on a chat training example. Pure Python, so the API checks an uploaded training file with the same
rules a fine-tune applies to it; rendering with a chat template lives in ``worker.models.chat``.

Imports: ``barge`` only.
"""

from __future__ import annotations

from typing import Any

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


def chat_example(value: Any, max_text_chars: int, name: str = "messages") -> list[dict[str, str]]:
    """A chat training example's messages: it must end in something to learn (an assistant
    message with content) that answers something, within ``max_text_chars`` of content."""
    messages = parse_messages(value, name)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers or not answers[-1]:
        raise MessagesError(f"{name!r} has no assistant message with content to learn", name)
    if messages[0]["role"] == "assistant" and len(answers) == 1 and len(messages) == 1:
        raise MessagesError(f"{name!r} has only an assistant message (nothing it answers)", name)
    chars = sum(len(m["content"]) for m in messages)
    if chars > max_text_chars:
        raise MessagesError(
            f"{name!r} has {chars} characters of content, more than the limit of "
            f"{max_text_chars} (BARGE_MAX_TEXT_CHARS)",
            name,
        )
    return messages
