"""The control API's OpenAPI 3.1 description, served at ``/api/v1/openapi.json``.

Written by hand; ``tests/api/test_openapi.py`` checks that it names exactly the routes of
:data:`mailpacer.http.api.ROUTES` (and each route's methods).
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_MEANING = {
    400: "bad input (JSON, a field, a template the list does not fit); nothing changed",
    401: "no bearer token or a wrong one (WWW-Authenticate: Bearer)",
    403: "the read-only token cannot write",
    404: "no such campaign or suppression",
    409: "conflict with the campaign's state (name taken, cannot resume a cancelled one)",
    413: "request body too large",
    415: "wrong content type",
    503: "the ledger database is unavailable; try again",
}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    errors = {str(c): {"$ref": f"#/components/responses/E{c}"} for c in (401, *codes, 503)}
    return ok | errors


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the campaign's name (percent-encoded)",
    "schema": {"type": "string", "maxLength": 200},
}
_VALUE = {
    "name": "value",
    "in": "path",
    "required": True,
    "description": "an address (a@example.com) or a domain (example.com), percent-encoded",
    "schema": {"type": "string", "maxLength": 320},
}
_CAMPAIGN_OK = {"200": _json(_ref("Campaign"), "the campaign afterwards")}
_JSON_BODY_OPTIONAL = {
    "required": False,
    "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
}


def _action(summary: str, description: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": description,
            "parameters": [_NAME],
            "requestBody": _JSON_BODY_OPTIONAL,
            "responses": _responses(_CAMPAIGN_OK, 403, 404, 409, 413, 415),
        }
    }


_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Campaign": {
        "type": "object",
        "required": ["campaign", "status", "total", "counts", "remaining"],
        "properties": {
            "campaign": {"type": "string"},
            "status": {
                "enum": ["ready", "running", "paused", "finished", "cancelled", "failed"],
            },
            "total": {"type": "integer"},
            "counts": _COUNTS,
            "remaining": {"type": "integer"},
            "sender": {"type": "string"},
            "template": {"type": "string"},
            "source": {"type": ["string", "null"]},
            "settings": {"type": "object"},
            "created_at": {"type": "number", "description": "UNIX time"},
            "finished_at": {"type": ["number", "null"]},
            "next_retry_at": {"type": ["number", "null"]},
            "note": {"type": ["string", "null"], "description": "why it is held, if it is"},
            "changed": {**_COUNTS, "description": "retry / resolve-uncertain: moved per state"},
            "recipients": {"type": "integer", "description": "create: recipients imported"},
            "import": {"type": "object", "description": "create: the import's report"},
        },
    },
    "CampaignSpec": {
        "type": "object",
        "required": ["name", "from"],
        "additionalProperties": False,
        "description": "Exactly one of template and message. Paths are on the agent's host.",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "from": {"type": "string", "examples": ["News <news@example.com>"]},
            "template": {
                "type": "string",
                "description": "absolute path of a template directory (subject.j2, "
                "body.txt.j2, optional body.html.j2)",
            },
            "message": {"type": "string", "description": "absolute path of a prepared .eml"},
            "rate": {"type": ["string", "null"], "examples": ["300/min", "10/s"]},
            "burst": {"type": "integer", "minimum": 1, "default": 1},
            "unsubscribe_url": {"type": ["string", "null"]},
            "dkim_key": {"type": "string"},
            "dkim_selector": {"type": "string"},
            "dkim_domain": {"type": "string"},
            "guard_bounce_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.05},
            "guard_deferral_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.3},
            "paused": {
                "type": "boolean",
                "default": False,
                "description": "keep it held until POST .../resume",
            },
            "pacing": {
                "type": ["object", "null"],
                "description": "the campaign's level of the pacing hierarchy (docs/pacing.md)",
            },
        },
    },
    "CreateRequest": {
        "type": "object",
        "required": ["spec", "recipients"],
        "properties": {
            "spec": _ref("CampaignSpec"),
            "recipients": {
                "type": "string",
                "contentMediaType": "text/csv",
                "description": "header row with an 'email' column; the other columns are "
                "template variables",
            },
        },
    },
    "RetryRequest": {
        "type": "object",
        "required": ["states"],
        "additionalProperties": False,
        "properties": {
            "states": {
                "type": "array",
                "minItems": 1,
                "items": {"enum": ["failed", "deferred", "uncertain"]},
            },
            "emails": {"type": "array", "items": {"type": "string"}, "maxItems": 10000},
        },
    },
    "ResolveRequest": {
        "type": "object",
        "required": ["resolution"],
        "additionalProperties": False,
        "properties": {
            "resolution": {"enum": ["resend", "mark-sent"]},
            "emails": {"type": "array", "items": {"type": "string"}, "maxItems": 10000},
        },
    },
    "Suppression": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "kind": {"enum": ["address", "domain"]},
            "value": {"type": "string"},
            "reason": {"type": ["string", "null"]},
            "source": {"type": ["string", "null"]},
            "created_at": {"type": "number"},
        },
    },
    "SuppressionRequest": {
        "type": "object",
        "required": ["value"],
        "additionalProperties": False,
        "properties": {
            "value": {"type": "string", "examples": ["someone@example.com", "example.org"]},
            "reason": {"type": "string", "maxLength": 1000},
            "source": {"type": "string", "maxLength": 200, "default": "api"},
        },
    },
}

_ERROR_RESPONSES = {f"E{code}": _json(_ref("Error"), text) for code, text in _MEANING.items()}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "mailpacer control API",
        "version": "1",
        "description": "Campaigns and suppressions of a mailpacer agent (`mailpacer run`). "
        "Authenticate with `Authorization: Bearer TOKEN` ([api] token_file: read-write; "
        'read_token_file: read-only). Every error is JSON: {"error": "..."}.',
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}],
    "paths": {
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/campaigns": {
            "get": {
                "summary": "every campaign, with its status and per-state counts",
                "responses": _responses(
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "campaigns": {"type": "array", "items": _ref("Campaign")}
                                },
                            },
                            "the campaigns, oldest first",
                        )
                    }
                ),
            },
            "post": {
                "summary": "create a campaign from a spec and a recipients CSV",
                "description": "Checked before anything is written (sender, template, rate, "
                "the list's header, a sample of the list rendered). The campaign is held "
                "while its recipients are imported, then queued (unless `paused`); the "
                "agent starts it at its next poll (within 20 s). The CSV is streamed to a "
                "file, up to the agent's upload limit (64 MiB by default). A create that "
                "failed during the import is finished by sending the same request again.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": _ref("CreateRequest"),
                            "encoding": {
                                "spec": {"contentType": "application/json"},
                                "recipients": {"contentType": "text/csv"},
                            },
                        }
                    },
                },
                "responses": _responses(
                    {"201": _json(_ref("Campaign"), "created (Location: the campaign's URL)")},
                    400,
                    403,
                    409,
                    413,
                    415,
                ),
            },
        },
        "/campaigns/{name}": {
            "get": {
                "summary": "one campaign",
                "parameters": [_NAME],
                "responses": _responses({"200": _json(_ref("Campaign"), "the campaign")}, 404),
            }
        },
        "/campaigns/{name}/pause": _action(
            "pause", "A running sender stops at its next claim; messages in flight finish."
        ),
        "/campaigns/{name}/resume": _action(
            "resume", "Queue a paused campaign again; the agent starts it at its next poll."
        ),
        "/campaigns/{name}/cancel": _action("cancel", "Stop for good: nothing more is sent."),
        "/campaigns/{name}/retry": {
            "post": {
                "summary": "put failed / deferred / uncertain recipients back to pending",
                "parameters": [_NAME],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RetryRequest")}},
                },
                "responses": _responses(_CAMPAIGN_OK, 400, 403, 404, 409, 413, 415),
            }
        },
        "/campaigns/{name}/resolve-uncertain": {
            "post": {
                "summary": "decide about uncertain recipients: resend them or mark them sent",
                "parameters": [_NAME],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ResolveRequest")}},
                },
                "responses": _responses(_CAMPAIGN_OK, 400, 403, 404, 409, 413, 415),
            }
        },
        "/suppressions": {
            "get": {
                "summary": "the suppression list, a page at a time (oldest first)",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "the last id of the previous page (next_after)",
                        "schema": {"type": "integer", "minimum": 0, "default": 0},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {"name": "kind", "in": "query", "schema": {"enum": ["address", "domain"]}},
                ],
                "responses": _responses(
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "suppressions": {
                                        "type": "array",
                                        "items": _ref("Suppression"),
                                    },
                                    "total": {"type": "integer"},
                                    "next_after": {"type": ["integer", "null"]},
                                },
                            },
                            "a page; next_after is null on the last one",
                        )
                    },
                    400,
                ),
            },
            "post": {
                "summary": "suppress an address or a whole domain",
                "description": "Idempotent: 201 when added, 200 when it was listed already. "
                "Pending and deferred recipients of unfinished campaigns on the list become "
                "suppressed at once.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SuppressionRequest")}},
                },
                "responses": _responses(
                    {
                        "201": _json({"type": "object"}, "added"),
                        "200": _json({"type": "object"}, "already listed"),
                    },
                    400,
                    403,
                    413,
                    415,
                ),
            },
        },
        "/suppressions/{value}": {
            "get": {
                "summary": "one entry of the suppression list",
                "parameters": [_VALUE],
                "responses": _responses({"200": _json({"type": "object"}, "the entry")}, 400, 404),
            },
            "delete": {
                "summary": "take an address or a domain off the suppression list",
                "description": "Recipients already suppressed stay suppressed.",
                "parameters": [_VALUE],
                "responses": _responses(
                    {"200": _json({"type": "object"}, "the entry removed")}, 400, 403, 404
                ),
            },
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": SCHEMAS,
        "responses": _ERROR_RESPONSES,
    },
}
