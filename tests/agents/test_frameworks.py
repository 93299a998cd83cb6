"""Two agent frameworks from the registry, unchanged but for base_url and key,
end to end against the live platform (uvicorn, the real worker, the upstream
speaking OpenAI's protocol): the OpenAI Agents SDK running an agent with a
function tool on its Chat Completions model, and LangChain's ChatOpenAI with
bind_tools and with_structured_output. Neither framework's tracing is on (no
network)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from pydantic import BaseModel, SecretStr

from tests.support import Personas


@pytest.fixture
def base_url(platform_server, worker) -> str:
    return f"{platform_server.url}/v1"


def test_an_openai_agents_sdk_agent_calls_its_tool_through_the_platform(
    base_url: str, committed_personas: Personas, upstream
):
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # its traces would go to OpenAI's API
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=base_url, api_key=committed_personas.alice.key, max_retries=0, timeout=20)
    agent = Agent(
        name="forecaster",
        instructions="Answer with the weather tool.",
        model=OpenAIChatCompletionsModel(model="local-small", openai_client=client),
        tools=[get_weather],
    )

    async def run() -> Any:
        try:
            return await Runner.run(agent, "get_weather for Paris")
        finally:
            await client.close()

    result = asyncio.run(run())
    assert calls == ["get_weather for Paris"]  # the model's call reached the tool, arguments intact
    assert result.final_output == "Tool results: sunny in get_weather for Paris"
    assert int(upstream.stats()["chat_per_model"]["local-small"]) == 2  # the call, then the answer


class Forecast(BaseModel):
    city: str
    sunny: bool


def test_langchain_chat_openai_binds_tools_and_returns_structured_output(
    base_url: str, committed_personas: Personas, monkeypatch
):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    key = SecretStr(committed_personas.alice.key)
    llm = ChatOpenAI(model="local-small", base_url=base_url, api_key=key, max_retries=0)

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    message = llm.bind_tools([get_weather]).invoke("get_weather for Paris")
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [
        ("get_weather", {"city": "get_weather for Paris"})
    ]
    structured = llm.with_structured_output(Forecast).invoke("Paris")
    assert structured == Forecast(city="Paris", sunny=True)
