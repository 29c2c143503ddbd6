"""Model clients: what a ``ModelAgent`` talks to.

How this works
--------------
``base`` defines the messages, tool calls and replies every client speaks and
the ``ModelClient`` protocol; ``openai_compat`` talks to a Chat Completions
server over HTTP; ``offline`` answers from a script, for tests and demos that
must not reach a network.
"""

from agents.models.base import (
    ChatMessage,
    ModelClient,
    ModelError,
    ModelReply,
    ToolCall,
    Usage,
)
from agents.models.offline import ScriptedModel, ScriptedRequest, call, calls, reply
from agents.models.openai_compat import OpenAICompatibleClient, OpenAISettings

__all__ = [
    "ChatMessage",
    "ModelClient",
    "ModelError",
    "ModelReply",
    "OpenAICompatibleClient",
    "OpenAISettings",
    "ScriptedModel",
    "ScriptedRequest",
    "ToolCall",
    "Usage",
    "call",
    "calls",
    "reply",
]
