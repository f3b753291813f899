"""Chat messages rendered with a model's chat template (their checks live in ``barge.chat``),
shared by native ``generate`` jobs (``messages_field``) and the OpenAI chat completions
endpoint.

Imports: ``barge`` only; never ``api`` or ``cli``.
"""

from __future__ import annotations

from typing import Any

from barge.chat import CHAT_ROLES, MessagesError, parse_messages
from barge.errors import describe

__all__ = ["CHAT_ROLES", "MessagesError", "has_template", "parse_messages", "render"]


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
