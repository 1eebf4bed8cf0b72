"""The OpenAPI document and its Swagger UI page."""

from __future__ import annotations


def test_openapi_describes_every_endpoint(client, app):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    routes = {rule.rule for rule in app.url_map.iter_rules()} - {"/docs/assets/<path:filename>"}
    documented = {p.replace("{model_id}", "<path:model_id>") for p in document["paths"]}
    assert routes - documented <= {"/openapi.json", "/docs"}
    generate = document["paths"]["/generate"]["post"]
    assert set(generate["responses"]) >= {"200", "400", "404", "413", "500", "503"}
    schema = document["components"]["schemas"]["GenerateRequest"]
    assert schema["properties"]["top_p"]["maximum"] == 1  # from the pydantic model itself
    page = client.get("/docs")
    assert b"swagger-ui" in page.data
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
