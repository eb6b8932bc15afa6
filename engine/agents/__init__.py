"""Agents: Claude (anthropic SDK) and the offline tuner, behind one interface (base.Agent)."""

from __future__ import annotations

from engine.agents.base import Agent
from engine.base import api_key


def make_agent(name: str, device: str = "cpu", model: str | None = None) -> Agent:
    """auto: Claude when ANTHROPIC_API_KEY is set, else the offline tuner."""
    if name == "auto":
        name = "claude" if api_key.value() else "tuner"
    if name == "claude":
        from engine.agents.claude import ClaudeAgent
        return ClaudeAgent(model=model)
    if name == "tuner":
        from engine.agents.tuner import TunerAgent
        return TunerAgent(device=device)
    raise ValueError(f"unknown agent {name!r}: choose auto, claude or tuner")
