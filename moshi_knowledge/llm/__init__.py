"""One client wrapper for OpenAI and Gemini: keys from the environment, retries, response cache, structured output."""

from moshi_knowledge.llm.client import LLMClient
from moshi_knowledge.llm.output import BadOutput, Message

__all__ = ["BadOutput", "LLMClient", "Message"]
