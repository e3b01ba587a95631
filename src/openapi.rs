//! The OpenAPI 3 document served at `/v3/openapi.json`, generated from the handlers'
//! annotations (utoipa) and completed from the route table, so the document, the
//! policies and the code cannot drift apart.

use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::domain::change::AuditRecord;
use crate::domain::image::{Image, ImageId, ImageName, ImagePatch, NewImage, Provider, RemoteUser};
use crate::error::ErrorBody;
use crate::routes::{self, IdMessage, TABLE, Updated};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "image-catalog",
        description = "A catalog of machine images (EC2 AMIs, OpenStack images, static \
                       templates): the v3 Images API. Every /v3 route needs HTTP Basic or \
                       Bearer credentials of a user holding the route's policy \
                       (x-policy)."
    ),
    components(schemas(
        Image,
        ImageId,
        Provider,
        RemoteUser,
        ImageName,
        NewImage,
        ImagePatch,
        IdMessage,
        Updated,
        AuditRecord,
        ErrorBody,
        routes::ops::Health
    ))
)]
struct ApiDoc;

/// `*`, or quoted entity tags (strong or `W/`) separated by commas; an empty list
/// matches nothing (412).
const IF_MATCH_PATTERN: &str = r#"^\s*(\*|((W/)?"[^",]*"(\s*,\s*(W/)?"[^",]*")*)?)\s*$"#;

fn http_method(method: &str) -> utoipa::openapi::path::HttpMethod {
    use utoipa::openapi::path::HttpMethod;
    match method {
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "DELETE" => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// The document for a server whose config lists `providers`: the paths of the
/// route table, each with its handler's annotation.
pub fn document(providers: &[String]) -> Value {
    let mut api = ApiDoc::openapi();
    for route in TABLE {
        api.paths.add_path_operation(
            route.path,
            vec![http_method(route.method)],
            (route.operation)(),
        );
    }
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    doc["components"]["securitySchemes"] = json!({
        "basic": {"type": "http", "scheme": "basic"},
        "bearer": {"type": "http", "scheme": "bearer"},
    });
    doc["components"]["schemas"]["Provider"]["enum"] = json!(providers);
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        })
    };
    for route in TABLE {
        let operation = &mut doc["paths"][route.path][route.method.to_ascii_lowercase()];
        if !operation.is_object() {
            // A route without annotations would show as `null`: the test of the
            // document catches it.
            continue;
        }
        // The answers every route shares are added here rather than repeated in each
        // handler's annotation.
        // An entity tag is quoted; a bare one is a 400 (see `http::headers::if_match`).
        // (The header is optional; `null` is no value it can have.)
        if let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        {
            for parameter in parameters {
                if parameter["name"] == "If-Match" {
                    parameter["schema"] = json!({"type": "string", "pattern": IF_MATCH_PATTERN});
                }
            }
        }
        if route.path != "/metrics" {
            operation["responses"]["406"] = error("Accept rules out application/json");
        }
        operation["responses"]["431"] = error(
            "The request headers are larger than the server accepts; the connection is closed",
        );
        if operation["responses"]["503"].is_null() {
            operation["responses"]["503"] =
                error("The server holds as many connections as it may; retry in a moment");
        }
        if operation["requestBody"].is_object() {
            operation["responses"]["408"] = error("The request body did not arrive in time");
        }
        match route.policy {
            Some(policy) => {
                operation["responses"]["401"] =
                    error("No, malformed or wrong credentials; comes with WWW-Authenticate");
                operation["responses"]["403"] =
                    error(&format!("The user does not hold the policy {policy}"));
                operation["responses"]["429"] = error(
                    "Too many failed logins for this user from this address; see Retry-After",
                );
                operation["x-policy"] = json!(policy);
                operation["security"] = json!([{"basic": []}, {"bearer": []}]);
                let described = operation["description"].as_str().unwrap_or_default();
                operation["description"] = json!(format!(
                    "{described}\n\nPolicy: `{policy}`. A user without it gets 403."
                ));
            }
            None => {
                operation["security"] = json!([]);
                let described = operation["description"].as_str().unwrap_or_default();
                operation["description"] = json!(format!(
                    "{described}\n\nOpen to anyone: no credentials needed."
                ));
            }
        }
    }
    doc
}
