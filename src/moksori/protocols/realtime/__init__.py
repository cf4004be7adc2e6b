"""Sans-I/O codec for the OpenAI Realtime protocol (GA, beta) and Azure Voice Live.

Bytes/JSON in -> typed client events; data in -> JSON-able server events. No sockets,
no asyncio, no engine imports.
"""

from .audio_formats import PCM16_24K, PCMA, PCMU, AudioFormat, parse_audio_format
from .client_events import (CLIENT_EVENT_TYPES, ClientEvent, ConversationItemCreate, ConversationItemDelete,
                            ConversationItemRetrieve, ConversationItemTruncate, InputAudioBufferAppend,
                            InputAudioBufferClear, InputAudioBufferCommit, OutputAudioBufferClear, ResponseCancel,
                            ResponseCreate, ResponseOverrides, SessionUpdate, TranscriptionSessionUpdate,
                            parse_client_event, parse_item)
from .flavor import Flavor, detect_flavor, event_name
from .items import (ContentPart, FunctionCallItem, FunctionCallOutputItem, Item, ItemReference, MessageItem,
                    Usage, event_part, function_call_item, function_call_output_item, item_to_wire,
                    message_item, part_to_wire, response_object, status_details, usage_to_wire)
from .mcp import (MCPApprovalPolicy, MCPApprovalResponseItem, MCPToolConfig, MCPToolFilter, mcp_approval_request_item,
                  mcp_approval_response_item, mcp_call_item, mcp_http_error, mcp_list_tools_item, mcp_protocol_error,
                  mcp_tool_execution_error, mcp_tool_to_wire, parse_mcp_tools)
from .server_events import ServerEvents
from .session_config import SUPPORTED_NOISE_REDUCTION, SessionConfig, apply_session_update, session_to_wire
from .session_fields import (MAX_PROMPT_CHARS, TRANSCRIPTION_LANGUAGES, InputTranscription, TurnDetection,
                             pinned_language)

__all__ = [
    "AudioFormat", "CLIENT_EVENT_TYPES", "ClientEvent", "ContentPart", "ConversationItemCreate",
    "ConversationItemDelete", "ConversationItemRetrieve", "ConversationItemTruncate", "Flavor",
    "FunctionCallItem", "FunctionCallOutputItem", "InputAudioBufferAppend", "InputAudioBufferClear",
    "InputAudioBufferCommit", "InputTranscription", "Item", "ItemReference", "MAX_PROMPT_CHARS",
    "MCPApprovalPolicy", "MCPApprovalResponseItem", "MCPToolConfig", "MCPToolFilter", "MessageItem",
    "OutputAudioBufferClear", "PCM16_24K", "PCMA", "PCMU", "ResponseCancel", "ResponseCreate",
    "ResponseOverrides", "SUPPORTED_NOISE_REDUCTION", "ServerEvents", "SessionConfig", "SessionUpdate",
    "TRANSCRIPTION_LANGUAGES", "TranscriptionSessionUpdate", "TurnDetection", "Usage", "apply_session_update",
    "detect_flavor", "event_name", "event_part", "function_call_item", "function_call_output_item", "item_to_wire",
    "mcp_approval_request_item", "mcp_approval_response_item", "mcp_call_item", "mcp_http_error",
    "mcp_list_tools_item", "mcp_protocol_error", "mcp_tool_execution_error", "mcp_tool_to_wire",
    "message_item", "parse_audio_format", "parse_mcp_tools", "parse_client_event", "parse_item", "part_to_wire",
    "pinned_language", "response_object", "session_to_wire", "status_details", "usage_to_wire",
]
