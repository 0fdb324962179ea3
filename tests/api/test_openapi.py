"""The OpenAPI document names exactly the router's routes, and is what the API serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mailpacer.http.api import ROUTES
from mailpacer.http.openapi import OPENAPI

from .conftest import served

METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in OPENAPI["paths"].items()
        for method in item
        if method in METHODS
    }


def test_every_route_is_documented_and_nothing_else() -> None:
    routed = {(r.method, r.path) for r in ROUTES}
    assert routed == documented()
    assert len(routed) == len(ROUTES)  # no route twice


def test_path_parameters_and_security_match_the_router() -> None:
    for route in ROUTES:
        operation = OPENAPI["paths"][route.path][route.method.lower()]
        names = set(re.findall(r"{(\w+)}", route.path))
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert names == declared, route
        public = operation.get("security") == []
        assert public == (not route.auth), route
        if route.auth:
            assert "401" in operation["responses"], route
        if route.write:
            assert "403" in operation["responses"], route


def test_document_is_openapi_3_1_and_every_ref_resolves() -> None:
    assert OPENAPI["openapi"].startswith("3.1.")
    text = json.dumps(OPENAPI)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node: Any = OPENAPI
        for part in ref.split("/"):
            node = node[part]
        assert isinstance(node, dict), ref


async def test_served_document_is_the_module_s(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        response = await s.client.get("/openapi.json", headers={"Authorization": ""})
        assert response.status_code == 200
        assert response.json() == json.loads(json.dumps(OPENAPI))
