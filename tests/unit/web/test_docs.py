"""The OpenAPI document. Its Swagger UI page is tested in Chromium: tests/live/test_docs_page.py."""

from __future__ import annotations


def test_openapi_describes_every_endpoint(client, app):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    assets = {"/docs/assets/<path:filename>", "/viewer/<path:filename>"}
    routes = {rule.rule for rule in app.url_map.iter_rules()} - assets
    documented = {p.replace("{model_id}", "<path:model_id>") for p in document["paths"]}
    assert routes - documented <= {"/openapi.json", "/docs", "/"}  # pages, not API
    generate = document["paths"]["/generate"]["post"]
    assert set(generate["responses"]) >= {"200", "400", "404", "413", "500", "503"}
    schema = document["components"]["schemas"]["GenerateRequest"]
    assert schema["properties"]["top_p"]["maximum"] == 1  # from the pydantic model itself
