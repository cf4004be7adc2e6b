"""The Realtime MCP codec: `{"type": "mcp"}` tools in session.update / response.create, the
client's `mcp_approval_response` item, and the MCP items and events the server builds,
validated against the official `openai` SDK's models (GA) and azure-ai-voicelive (Azure)."""

from __future__ import annotations

import itertools
import json

import pytest

from moksori.errors import ProtocolError
from moksori.protocols.realtime import (Flavor, MCPApprovalPolicy, MCPToolFilter, ServerEvents, SessionConfig,
                                        apply_session_update, mcp, mcp_approval_request_item,
                                        mcp_approval_response_item, mcp_call_item, mcp_http_error,
                                        mcp_list_tools_item, mcp_protocol_error, mcp_tool_execution_error,
                                        parse_client_event, response_object, session_to_wire)
from test_realtime_codec import MAX, _FakeSocket, _Listener, azure_validate, ga_validate

TOOLS = [{"name": "weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
          "description": "Today's weather", "annotations": {"readOnlyHint": True}},
         {"name": "secret_op", "input_schema": {"type": "object"}}]


def sdk_mcp_tool() -> dict:
    """Built with the openai SDK's own TypedDict, as a client would."""
    from openai.types.realtime.realtime_tools_config_union_param import Mcp

    tool: Mcp = {"type": "mcp", "server_label": "deepwiki", "server_url": "http://127.0.0.1:8765/mcp",
                 "headers": {"X-Team": "voice"}, "authorization": "tok-1",
                 "allowed_tools": {"tool_names": ["weather", "secret_op"]},
                 "require_approval": {"never": {"read_only": True}},
                 "server_description": "test server"}
    return dict(tool)


@pytest.fixture
def served(monkeypatch):
    monkeypatch.setattr(mcp, "SERVED", True)


def test_session_update_parses_mcp_tools_and_policies(served) -> None:
    cfg, warnings = apply_session_update(SessionConfig(), {"type": "realtime", "tools": [
        sdk_mcp_tool(),
        {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}},
        {"type": "mcp", "server_label": "plain", "server_url": "https://mcp.example.com/mcp",
         "allowed_tools": ["a", "b"], "require_approval": "never"},
    ]}, Flavor.GA)
    assert warnings == []
    assert [t["name"] for t in cfg.tools] == ["lookup"]  # function tools stay where the engine reads them
    dw, plain = cfg.mcp_tools
    assert dw.server_label == "deepwiki" and dw.server_url == "http://127.0.0.1:8765/mcp"
    assert dw.request_headers() == {"X-Team": "voice", "Authorization": "Bearer tok-1"}
    assert dw.allows("weather") and not dw.allows("other")
    assert not dw.require_approval.requires_approval("weather", read_only_hint=True)
    assert dw.require_approval.requires_approval("secret_op", read_only_hint=False)
    assert plain.allows("a") and not plain.allows("c")
    assert not plain.require_approval.requires_approval("a")

    wire = session_to_wire(cfg, Flavor.GA, session_id="sess_1", model="gpt-realtime")
    echoed = [t for t in wire["tools"] if t["type"] == "mcp"]
    assert [t["server_label"] for t in echoed] == ["deepwiki", "plain"]
    assert "headers" not in echoed[0] and "authorization" not in echoed[0]  # secrets are not echoed
    session = ga_validate(ServerEvents(Flavor.GA).session_updated(wire)).session
    assert session.tools[1].type == "mcp" and session.tools[1].require_approval.never.read_only is True


@pytest.mark.parametrize("policy,name,read_only,expected", [
    (None, "x", True, True),  # omitted: always ask
    ("always", "x", True, True),
    ("never", "x", False, False),
    ({"never": {"tool_names": ["safe"]}}, "safe", None, False),
    ({"never": {"tool_names": ["safe"]}}, "other", None, True),
    ({"always": {"tool_names": ["danger"]}}, "harmless", None, True),  # not in `never`: ask
    ({"never": {"read_only": True}, "always": {"read_only": False}}, "ro", True, False),
    ({"never": {"tool_names": ["a"], "read_only": True}}, "a", False, True),  # both fields must match
    ({"never": ["safe"]}, "safe", None, False),  # Azure's list form
    ({"never": {}}, "x", True, True),  # an empty filter matches nothing
])
def test_require_approval(policy, name, read_only, expected) -> None:
    tool = {"type": "mcp", "server_label": "s", "server_url": "http://127.0.0.1:1/mcp"}
    if policy is not None:
        tool["require_approval"] = policy
    parsed = mcp.parse_mcp_tool(tool, "tools[0]", [])
    assert parsed.require_approval.requires_approval(name, read_only) is expected


@pytest.mark.parametrize("tool,param", [
    ({"type": "mcp", "server_label": "s"}, "session.tools[0].server_url"),
    ({"type": "mcp", "server_url": "http://x/mcp"}, "session.tools[0].server_label"),
    ({"type": "mcp", "server_label": "s", "server_url": "http://x", "require_approval": "sometimes"},
     "session.tools[0].require_approval"),
    ({"type": "mcp", "server_label": "s", "server_url": "http://x", "require_approval": {"maybe": {}}},
     "session.tools[0].require_approval.maybe"),
    ({"type": "mcp", "server_label": "s", "server_url": "http://x", "allowed_tools": "all"},
     "session.tools[0].allowed_tools"),
    ({"type": "mcp", "server_label": "s", "server_url": "http://x", "headers": {"A": 1}},
     "session.tools[0].headers.A"),
])
def test_invalid_mcp_tools_are_rejected(tool, param) -> None:
    with pytest.raises(ProtocolError) as e:
        apply_session_update(SessionConfig(), {"tools": [tool]}, Flavor.GA)
    assert e.value.param == param


def test_duplicate_labels_and_connectors() -> None:
    t = {"type": "mcp", "server_label": "s", "server_url": "http://x/mcp"}
    with pytest.raises(ProtocolError, match="duplicate MCP server_label"):
        apply_session_update(SessionConfig(), {"tools": [t, t]}, Flavor.GA)
    cfg, warnings = apply_session_update(SessionConfig(), {"tools": [
        {"type": "mcp", "server_label": "gmail", "connector_id": "connector_gmail"}]}, Flavor.GA)
    assert cfg.mcp_tools == () and "connectors and tunnels are not supported" in warnings[0]


def test_when_not_served_mcp_tools_warn_and_are_not_echoed(monkeypatch) -> None:
    assert mcp.SERVED is True  # the connection runs them (tests/test_realtime_mcp.py)
    monkeypatch.setattr(mcp, "SERVED", False)
    cfg, warnings = apply_session_update(SessionConfig(), {"tools": [sdk_mcp_tool()],
                                                           "tool_choice": {"type": "mcp", "server_label": "deepwiki"}},
                                         Flavor.GA)
    assert len(cfg.mcp_tools) == 1 and cfg.tool_choice == "auto"
    assert any("does not connect to them yet" in w for w in warnings)
    assert session_to_wire(cfg, Flavor.GA, session_id="s", model="m")["tools"] == []
    with pytest.raises(ProtocolError, match="does not run MCP tools yet"):
        parse_client_event(json.dumps({"type": "conversation.item.create", "item": {
            "type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True}}), max_bytes=MAX)


def test_response_create_mcp_tools_and_tool_choice(served) -> None:
    ev = parse_client_event(json.dumps({"type": "response.create", "response": {
        "tools": [sdk_mcp_tool()], "tool_choice": {"type": "mcp", "server_label": "deepwiki", "name": "weather"}}}),
        max_bytes=MAX)
    assert ev.response.mcp_tools[0].server_label == "deepwiki" and ev.response.tools == ()
    assert ev.response.tool_choice == {"type": "mcp", "server_label": "deepwiki", "name": "weather"}
    assert ev.response.warnings == ()


def test_approval_response_item_from_the_sdk(served) -> None:
    from openai.types.realtime import ConversationItemCreateEvent, RealtimeMcpApprovalResponse

    sdk_event = ConversationItemCreateEvent(type="conversation.item.create", item=RealtimeMcpApprovalResponse(
        type="mcp_approval_response", id="item_r1", approval_request_id="mcpr_7", approve=False,
        reason="not now"))
    ev = parse_client_event(sdk_event.model_dump_json(exclude_none=True), max_bytes=MAX)
    item = ev.item
    assert (item.approval_request_id, item.approve, item.reason, item.id) == ("mcpr_7", False, "not now", "item_r1")
    wire = mcp_approval_response_item(item, "item_r1")
    ga_validate(ServerEvents(Flavor.GA).conversation_item_added(wire))
    azure_validate(ServerEvents(Flavor.AZURE).conversation_item_added(wire))
    with pytest.raises(ProtocolError) as e:
        parse_client_event(json.dumps({"type": "conversation.item.create", "item": {
            "type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": "yes"}}), max_bytes=MAX)
    assert e.value.param == "item.approve"


def mcp_events(flavor: Flavor) -> list[dict]:
    ev = ServerEvents(flavor, itertools.count(1))
    listing = mcp_list_tools_item("item_l1", "deepwiki", TOOLS)
    call = mcp_call_item("item_c1", "deepwiki", "weather", '{"city":"Seoul"}')
    done = mcp_call_item("item_c1", "deepwiki", "weather", '{"city":"Seoul"}', approval_request_id="mcpr_1",
                         output="Seoul: sunny")
    failed = [mcp_call_item("item_c2", "deepwiki", "secret_op", "{}", error=e) for e in (
        mcp_tool_execution_error("the tool failed"), mcp_protocol_error(-32601, "Unknown tool"),
        mcp_http_error(401, "unauthorized"))]
    approval = mcp_approval_request_item("mcpr_1", "deepwiki", "secret_op", '{"target":"db"}')
    out = [
        ev.conversation_item_added(mcp_list_tools_item("item_l1", "deepwiki", [])),
        ev.mcp_list_tools_in_progress("item_l1"), ev.mcp_list_tools_completed("item_l1"),
        ev.mcp_list_tools_failed("item_l1"), ev.conversation_item_done(listing),
        ev.response_output_item_added("resp_1", 0, call),
        ev.mcp_call_arguments_delta("resp_1", "item_c1", 0, '{"city":'),
        ev.mcp_call_arguments_done("resp_1", "item_c1", 0, '{"city":"Seoul"}'),
        ev.mcp_call_in_progress("item_c1", 0), ev.mcp_call_completed("item_c1", 0), ev.mcp_call_failed("item_c2", 1),
        ev.response_output_item_done("resp_1", 0, done),
        *[ev.response_output_item_done("resp_1", 1, f) for f in failed],
        ev.response_output_item_added("resp_2", 0, approval), ev.conversation_item_added(approval),
        ev.response_done(response_object("resp_2", flavor, status="completed", output=[approval])),
    ]
    return [e for e in out if e is not None]


def test_mcp_events_and_items_conform_to_the_ga_sdk() -> None:
    events = mcp_events(Flavor.GA)
    assert len(events) == 18
    parsed = [ga_validate(e) for e in events]
    listing = parsed[4].item
    assert listing.type == "mcp_list_tools" and listing.tools[0].name == "weather"
    assert listing.tools[0].annotations == {"readOnlyHint": True}
    assert parsed[11].item.output == "Seoul: sunny" and parsed[11].item.approval_request_id == "mcpr_1"
    assert [p.item.error.type for p in parsed[12:15]] == ["tool_execution_error", "protocol_error", "http_error"]
    assert parsed[15].item.type == "mcp_approval_request" and parsed[17].response.output[0].name == "secret_op"


async def test_openai_agents_accepts_the_mcp_events() -> None:
    """openai-agents validates every server event it receives strictly: none may fail."""
    from agents.realtime import model_events as me
    from agents.realtime.openai_realtime import OpenAIRealtimeWebSocketModel

    model = OpenAIRealtimeWebSocketModel()
    model._websocket = _FakeSocket()
    listener = _Listener()
    model.add_listener(listener)
    events = mcp_events(Flavor.GA)
    for e in events:
        await model._handle_ws_event(json.loads(json.dumps(e)))
    got = listener.events
    assert len([e for e in got if isinstance(e, me.RealtimeModelRawServerEvent)]) == len(events)
    assert not [e for e in got if isinstance(e, (me.RealtimeModelExceptionEvent, me.RealtimeModelErrorEvent))]


def test_mcp_events_conform_to_azure_and_are_absent_in_beta() -> None:
    for e in mcp_events(Flavor.AZURE):
        azure_validate(e)
    beta = ServerEvents(Flavor.BETA)
    assert beta.mcp_list_tools_in_progress("x") is None and beta.mcp_call_completed("x", 0) is None
    assert beta.mcp_call_arguments_delta("r", "x", 0, "{") is None


def test_filters_round_trip() -> None:
    p = MCPApprovalPolicy("filter", always=MCPToolFilter(("a",)), never=MCPToolFilter(read_only=True))
    assert p.to_wire() == {"always": {"tool_names": ["a"]}, "never": {"read_only": True}}
