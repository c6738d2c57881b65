"""JSON Schema export of every message, so other languages can speak the protocol."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .envelope import PROTOCOL_VERSION, Progress, Reply, Request
from .errors import ErrorCode
from .verbs import VERBS, AgentEvent, AgentFacts


def protocol_schema() -> dict[str, Any]:
    """The JSON Schema of the envelope, the heartbeat and each verb's args and result."""
    models: list[type[BaseModel]] = [Request, Progress, Reply, AgentFacts, AgentEvent]
    for spec in VERBS.values():
        models.extend([spec.args, spec.result])
    unique = list(dict.fromkeys(models))
    refs, schema = models_json_schema(
        [(m, "validation") for m in unique],
        title=f"Shoal protocol v{PROTOCOL_VERSION}",
        ref_template="#/$defs/{model}",
    )

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return dict(refs[(model, "validation")])

    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["protocol_version"] = PROTOCOL_VERSION
    schema["messages"] = {
        "request": ref(Request),
        "progress": ref(Progress),
        "reply": ref(Reply),
        "heartbeat": ref(AgentFacts),
        "event": ref(AgentEvent),
    }
    schema["verbs"] = {
        str(spec.verb): {
            "summary": spec.summary,
            "role": str(spec.role),
            "mutating": spec.mutating,
            "args": ref(spec.args),
            "result": ref(spec.result),
        }
        for spec in VERBS.values()
    }
    schema["error_codes"] = [str(c) for c in ErrorCode]
    return schema
