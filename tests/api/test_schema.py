"""The OpenAPI schema documents every endpoint and its errors; the docs pages use only local assets."""

import re

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client

from portal.api.urls import router


@pytest.fixture
def schema(client: Client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_schema_is_openapi_3_with_token_and_session_auth(schema: dict) -> None:
    assert schema["openapi"].startswith("3.")
    assert schema["components"]["securitySchemes"]["tokenAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["tokenAuth"]["description"],
    }
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"code", "message", "fields"}


def test_every_route_is_in_the_schema(schema: dict) -> None:
    documented = set(schema["paths"])
    for url in router.urls:
        path = "/api/v1/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", url.pattern.regex.pattern).strip("^$")
        assert path.replace("{pk}", "{id}") in documented, path
    assert "/api/v1/me/" in documented


def test_every_operation_documents_its_errors(schema: dict) -> None:
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            expected = {"400", "401", "403", "429"}
            if "{id}" in path:
                expected.add("404")
            if method == "post":
                expected |= {"409", "415", "422"}
                assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"]), path
            assert expected <= codes, f"{method} {path} lacks {expected - codes}"
            for code in codes - {"200", "201", "204"}:
                ref = operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error"
            assert operation.get("summary"), f"{method} {path} has no summary"


def test_docs_pages_load_only_local_assets(client: Client) -> None:
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any("drf_spectacular_sidecar" in a for a in assets), assets
    assert not [a for a in assets if a.startswith(("http:", "https:", "//"))]
    for asset in assets:
        if asset.startswith(settings.STATIC_URL) or asset.startswith("/" + settings.STATIC_URL):
            assert finders.find(asset.split(settings.STATIC_URL, 1)[1]), f"{asset} is not a local static file"
    # Swagger UI's start-up script is a file of its own (no inline script under the CSP); it names the schema.
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "/api/schema/" in script.content.decode()
    assert client.get("/api/redoc/")["Location"] == "/api/docs/"  # Redoc was retired for the CSP
