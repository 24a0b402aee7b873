"""A small LangGraph app for the checkpointer tests: a chat turn, then a human review.

``agent`` answers with a stub chat model (no network: its reply is made from
the conversation, so every process gives the same one); ``review``
interrupts for approval and counts the approvals. Run as a script, it plays
turns on a thread through a ``TieredCheckpointSaver`` built from its
arguments (the tests use it as "the process before the restart")::

    python -m tests.langgraph_app REDIS_URL DATABASE_URL NAMESPACE THREAD DURABILITY TURNS
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, interrupt

from tieredstore.integrations.langgraph import TieredCheckpointSaver


class EchoModel(BaseChatModel):
    """Answers the last human message, numbering the turn; the same in every process."""

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        asked = [m for m in messages if isinstance(m, HumanMessage)]
        reply = AIMessage(content=f"answer {len(asked)}: {asked[-1].content}",
                          response_metadata={"model": "echo"})
        return ChatResult(generations=[ChatGeneration(message=reply)])

    @property
    def _llm_type(self) -> str:
        return "echo"


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    approved: int


def build(saver: TieredCheckpointSaver) -> CompiledStateGraph[Any, Any, Any, Any]:
    model = EchoModel()

    def agent(state: State) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def review(state: State) -> dict[str, Any]:
        decision = interrupt({"approve": state["messages"][-1].content})
        return {"approved": state.get("approved", 0) + (1 if decision == "yes" else 0)}

    graph = StateGraph(State)
    graph.add_node("agent", agent)
    graph.add_node("review", review)
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "review")
    graph.add_edge("review", END)
    return graph.compile(checkpointer=saver)


def config(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}


def turn(app: CompiledStateGraph[Any, Any, Any, Any], thread: str, question: str,
         approve: bool = True) -> dict[str, Any]:
    """One turn: the question, the interrupt, and (``approve``) the resume."""
    paused = app.invoke({"messages": [HumanMessage(question)]}, config(thread))
    assert "__interrupt__" in paused, paused
    if not approve:
        return paused
    result: dict[str, Any] = app.invoke(Command(resume="yes"), config(thread))
    return result


def main(argv: list[str]) -> None:
    redis_url, database_url, namespace, thread, durability, turns = argv
    with TieredCheckpointSaver.from_url(
        redis_url=redis_url, database_url=database_url, namespace=namespace,
        durability=durability,  # type: ignore[arg-type]
    ) as saver:
        app = build(saver)
        for i in range(int(turns)):
            turn(app, thread, f"question {i + 1}")
        # The last turn stops at the review: the restarted process resumes it.
        turn(app, thread, f"question {int(turns) + 1}", approve=False)
        state = app.get_state(config(thread))
        print(json.dumps({"next": list(state.next), "messages": len(state.values["messages"]),
                          "approved": state.values.get("approved", 0)}))


if __name__ == "__main__":
    main(sys.argv[1:])
