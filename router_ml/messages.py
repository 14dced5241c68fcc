"""Deriving the text a router sees from an OpenAI-style chat ``messages`` list.

The rule is fixed and shared by training and the runtime, so a router is trained on exactly the
text it will see in production:

1. the routed text is the content of the **last message whose role is ``user``**;
2. content given as a list of parts (the OpenAI multimodal form) contributes the ``text`` of each
   part whose ``type`` is ``"text"``, joined with ``"\\n"``; other parts (images, audio) are skipped;
3. if there is no user message, the text of all messages is joined with ``"\\n"``;
4. a text that is exactly the Python text of a non-empty list of at most :data:`MAX_TURNS` strings -
   ``str(["turn 1", "turn 2"])``, the form RouterBench's files hold every prompt in - is read as its last
   string (:func:`prompt_text`; the data layer reads such a prompt as one user turn per string). A router
   trained on those files then routes their cells, and production's plain text, as it was trained.
   (The bound keeps the reading linear in the text: a request of a million one-letter strings would
   otherwise take seconds and a gigabyte to parse.)

The last user turn is what decides which model can answer (RouteLLM routes on it too); earlier
turns mostly add length, which the runtime would have to truncate anyway.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MAX_TURNS", "content_text", "list_turns", "message_problem", "prompt_text", "routed_text"]

#: the most strings a text may list to be read as a list of turns (rule 4)
MAX_TURNS = 1024
# one string as repr() writes it (either quote, backslash escapes), then ", " or the closing bracket
_TURN = re.compile(r"""(?:'[^'\\]*(?:\\.[^'\\]*)*'|"[^"\\]*(?:\\.[^"\\]*)*")(?:, |(\]))""", re.S)


def content_text(content: Any) -> str:
    """Return the plain text of one message's ``content`` (a string or a list of parts).

    >>> content_text([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}])
    'hi'
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):  # bytes: not text parts
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
        return "\n".join(texts)
    raise TypeError(f"message content must be a string or a list of parts, not {type(content).__name__}")


def list_turns(text: Any) -> list[str] | None:
    r"""The strings of a text that is the Python text of a non-empty list of strings, else None.

    Only a text that ``str()`` of the decoded list gives back exactly counts - a prompt that merely
    starts with ``[``, or a list written another way (JSON's double quotes), stays text - and
    :func:`ast.literal_eval` evaluates literals only.

    >>> list_turns(r"['What is 2+2?\nAnswer:']")
    ['What is 2+2?\nAnswer:']
    >>> list_turns("[1, 2] is a list") is None and list_turns('["double quotes"]') is None
    True
    """
    if type(text) is not str or len(text) < 4 or text[0] != "[" or text[-1] != "]" or text[1] not in "'\"":
        return None
    pos = 1  # the shape first, in linear time: at most MAX_TURNS quoted strings between the brackets
    for _ in range(MAX_TURNS):
        match = _TURN.match(text, pos)
        if match is None:
            return None
        pos = match.end()
        if match.group(1):
            break
    if pos != len(text):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if type(value) is not list or not value or not all(type(t) is str for t in value) or str(value) != text:
        return None
    return value


def prompt_text(text: str) -> str:
    """Rule 4 of the module doc: the last string of a text that is the Python text of a list of strings
    (again while the result is one, so that reading a text twice reads it as once), else the text.

    >>> prompt_text("['You are terse.', 'What is 2+2?']"), prompt_text("[citation needed]")
    ('What is 2+2?', '[citation needed]')
    """
    while text[:1] == "[":
        turns = list_turns(text)
        if turns is None:
            break
        text = turns[-1]
    return text


def routed_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """Return the text a router routes on for a chat ``messages`` list (rules in the module doc).

    >>> routed_text([{"role": "system", "content": "Be brief."},
    ...              {"role": "user", "content": "What is 2+2?"}])
    'What is 2+2?'
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} objects, not {type(messages).__name__}")
    for message in reversed(messages):
        if message.get("role") == "user":
            return prompt_text(content_text(message.get("content")))
    return prompt_text("\n".join(content_text(m.get("content")) for m in messages))


def message_problem(messages: Any) -> tuple[str, str] | None:
    """The first problem of a chat ``messages`` list as ``(field, reason)``, or ``None`` when it is a
    non-empty list of objects with a string ``role`` and text or list-of-parts ``content``; only an
    ``assistant`` message may leave ``content`` out or null (a turn of tool calls), as the chat API allows.
    Shared by the training data layer and the routed client, which raise their own error types with it."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes) or not messages:
        return "messages", "required: a non-empty list of {\"role\", \"content\"} objects"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            return f"messages[{i}]", "each message must be an object with a string 'role'"
        content = message.get("content")
        if content is None and message["role"] != "assistant":
            return f"messages[{i}].content", (f"required for a {message['role']!r} message: a string or a list of "
                                               "content parts (only an assistant's may be left out)")
        if content is not None and not isinstance(content, str | list):
            return f"messages[{i}].content", "must be a string or a list of content parts"
    return None
