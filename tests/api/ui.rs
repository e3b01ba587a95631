//! The page for people under `/ui/`, without a browser: who may see which page, the
//! HTML refusals, the headers that keep it safe, escaping, paging and filters, the
//! redirect from `/`, `[ui] enabled = false`, and what it weighs. (In a real browser:
//! `ui_browser.rs`.)

use reqwest::{Method, Response};

use crate::helpers::{TestApp, config_text, config_with, default_users, spawn_app, spawn_app_with};

/// The page at `path` as `caller` sees it: status, headers, body.
async fn page(response: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let response: Response = response.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// The headers every `/ui/` response carries: a policy that allows no inline or
/// foreign script, no framing, no sniffing, no referrer.
fn assert_safe(headers: &reqwest::header::HeaderMap) {
    let csp = header(headers, "content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header(headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(headers, "referrer-policy"), "no-referrer");
}

async fn create(app: &TestApp, id: &str, provider: &str, name: &str) {
    let (status, body) = app
        .create(serde_json::json!({"id": id, "provider": provider, "remote_user": "ubuntu", "name": name}))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn root_redirects_to_the_page_and_the_page_asks_for_a_password() {
    let app = spawn_app().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/", "/ui"] {
        let response = no_redirects
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 307, "{path}");
        // Relative, so that it works under a proxy's sub-path.
        assert_eq!(response.headers()["location"], "ui/", "{path}");
    }
    let (status, headers, body) = page(app.request(Method::GET, "/ui/")).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "www-authenticate"),
        "Basic realm=\"image-catalog\""
    );
    assert!(header(&headers, "content-type").starts_with("text/html"));
    assert_safe(&headers);
    assert!(
        body.contains("<!DOCTYPE html>") && body.contains("401"),
        "{body}"
    );
    assert!(body.contains("Sign in"), "{body}");
    // A wrong password too; and a bearer token works as for the API.
    let (status, _, _) = page(app.user("admin", "wrong").request(Method::GET, "/ui/")).await;
    assert_eq!(status, 401);
    let (status, _, _) = page(
        app.bearer(crate::helpers::BOT_TOKEN)
            .request(Method::GET, "/ui/"),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_user_without_the_policy_gets_a_page_naming_it() {
    let app = spawn_app().await;
    // The reader holds read_images, not read_audit.
    let (status, headers, body) = page(app.reader().request(Method::GET, "/ui/audit")).await;
    assert_eq!(status, 403);
    assert!(header(&headers, "content-type").starts_with("text/html"));
    assert_safe(&headers);
    assert!(body.contains("read_audit"), "{body}");
    // Nor a link to it, nor the history on an image's page.
    create(&app, "ami-1", "ec2", "one").await;
    let (status, _, catalog) = page(app.reader().request(Method::GET, "/ui/")).await;
    assert_eq!(status, 200);
    assert!(!catalog.contains("href=\"audit\""), "{catalog}");
    let (_, _, image) = page(app.reader().request(Method::GET, "/ui/image/ami-1")).await;
    assert!(image.contains("needs the policy read_audit"), "{image}");
    // A user with no read_images: 403 on the catalog.
    let without = crate::helpers::policies_without_read_images();
    let app = spawn_app_with(&config_text(&without, &default_users())).await;
    let (status, _, body) = page(app.reader().request(Method::GET, "/ui/")).await;
    assert_eq!(status, 403);
    assert!(body.contains("read_images"), "{body}");
}

#[tokio::test]
async fn every_page_is_safe_and_the_files_it_loads_need_no_password() {
    let app = spawn_app().await;
    create(&app, "ami-1", "ec2", "one").await;
    for path in ["/ui/", "/ui/image/ami-1", "/ui/audit", "/ui/nothing-here"] {
        let (status, headers, body) = page(app.admin().request(Method::GET, path)).await;
        assert_eq!(
            status,
            if path.ends_with("here") { 404 } else { 200 },
            "{path}"
        );
        assert_safe(&headers);
        assert!(
            header(&headers, "content-type").starts_with("text/html"),
            "{path}"
        );
        assert_eq!(header(&headers, "cache-control"), "no-store", "{path}");
        assert!(
            body.starts_with("<!DOCTYPE html><html lang=\"en\">"),
            "{path}"
        );
        // No inline script, no script or style from elsewhere.
        assert!(!body.contains("<script>"), "{path}: an inline script");
        assert!(!body.contains("style="), "{path}: an inline style");
        assert!(!body.contains("http://") || path == "/ui/", "{path}");
    }
    for (file, kind) in [
        ("style.css", "text/css"),
        ("live.js", "text/javascript"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let path = format!("/ui/static/{file}");
        let response = app.request(Method::GET, &path).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file} without credentials");
        assert!(header(response.headers(), "content-type").starts_with(kind));
        assert_safe(response.headers());
        let etag = header(response.headers(), "etag").to_owned();
        let again = app
            .request(Method::GET, &path)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file}");
    }
    let (status, _, _) = page(app.request(Method::GET, "/ui/static/secret.txt")).await;
    assert_eq!(status, 404);
    // Read-only: no page takes a POST.
    let (status, _, _) = page(app.admin().request(Method::POST, "/ui/")).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn stored_values_are_escaped_everywhere_they_show() {
    let app = spawn_app().await;
    let hostile = "<script>alert('x')</script><img src=x onerror=alert(1)> & \"q\"";
    create(&app, "ami-<b>", "ec2", hostile).await;
    let (_, _, catalog) = page(app.admin().request(Method::GET, "/ui/")).await;
    let (_, _, image) = page(app.admin().request(Method::GET, "/ui/image/ami-%3Cb%3E")).await;
    let (_, _, trail) = page(app.admin().request(Method::GET, "/ui/audit")).await;
    for (name, body) in [("catalog", &catalog), ("image", &image), ("trail", &trail)] {
        assert!(
            body.contains("&lt;script&gt;alert('x')&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot;")
                || body.contains("&lt;script&gt;alert('x')&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; \"q\""),
            "{name}: {body}"
        );
        assert!(!body.contains("<script>alert"), "{name}");
        assert!(!body.contains("<img src=x"), "{name}");
        assert!(!body.contains("<b>"), "{name}: the id unescaped");
    }
    // The id in a link is percent-encoded.
    assert!(catalog.contains("href=\"image/ami-%3Cb%3E\""), "{catalog}");
}

#[tokio::test]
async fn the_catalog_pages_by_100_and_keeps_its_filter_and_search() {
    let app = spawn_app().await;
    for batch in (0..130).collect::<Vec<_>>().chunks(25) {
        let creates = batch.iter().map(|&i| {
            let provider = if i % 2 == 0 { "ec2" } else { "openstack" };
            let name = if i % 10 == 0 {
                format!("Ubuntu {i}")
            } else {
                format!("Debian {i}")
            };
            let app = &app;
            async move { create(app, &format!("img-{i:03}"), provider, &name).await }
        });
        futures_util::future::join_all(creates).await;
    }
    let rows = |body: &str| body.matches("<tr data-id=").count();
    let (_, _, first) = page(app.admin().request(Method::GET, "/ui/")).await;
    assert_eq!(rows(&first), 100);
    assert!(
        first.contains("href=\"./?marker=img-099\""),
        "the next page"
    );
    let (_, _, second) = page(app.admin().request(Method::GET, "/ui/?marker=img-099")).await;
    assert_eq!(rows(&second), 30);
    assert!(!second.contains("rel=\"next\""));
    assert!(second.contains("First page"));
    let (_, _, ubuntu) = page(
        app.admin()
            .request(Method::GET, "/ui/?q=UBUNTU&provider=ec2"),
    )
    .await;
    assert_eq!(rows(&ubuntu), 13, "img-000, img-010, ... img-120");
    assert!(
        ubuntu.contains("value=\"UBUNTU\""),
        "the search box keeps its text"
    );
    assert!(
        ubuntu.contains("<option value=\"ec2\" selected>"),
        "{ubuntu}"
    );
    // The script follows the same filter, folded as the search folds it.
    assert!(ubuntu.contains("data-q=\"ubuntu\"") && ubuntu.contains("data-provider=\"ec2\""));
    let (_, _, none) = page(app.admin().request(Method::GET, "/ui/?q=nowhere")).await;
    assert!(none.contains("No image matches."));
    let (status, _, body) = page(app.admin().request(Method::GET, "/ui/?provider=azure")).await;
    assert_eq!(status, 400);
    assert!(body.contains("ec2, openstack, static"), "{body}");
}

#[tokio::test]
async fn an_empty_catalog_says_how_to_add_the_first_image() {
    let app = spawn_app().await;
    let (status, _, body) = page(app.admin().request(Method::GET, "/ui/")).await;
    assert_eq!(status, 200);
    assert!(body.contains("The catalog is empty."), "{body}");
    assert!(body.contains("/v3/image"), "{body}");
}

#[tokio::test]
async fn an_image_shows_its_fields_etag_and_history() {
    let app = spawn_app().await;
    create(&app, "ami-1", "ec2", "first name").await;
    let (status, _) = app
        .admin()
        .put(
            "/v3/image/ami-1",
            serde_json::json!({"name": "second name"}),
        )
        .await;
    assert_eq!(status, 200);
    let etag = app.get_image_response("ami-1").await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, _, body) = page(app.admin().request(Method::GET, "/ui/image/ami-1")).await;
    assert_eq!(status, 200);
    for shown in [
        "second name",
        "ubuntu",
        "ec2",
        "History",
        "PUT",
        "POST",
        "admin",
    ] {
        assert!(body.contains(shown), "{shown}: {body}");
    }
    assert!(
        body.contains(&etag.replace('"', "&quot;")) || body.contains(&etag),
        "{etag}: {body}"
    );
    assert!(body.contains("<del>first name</del>"), "{body}");
    let (status, _, body) = page(app.admin().request(Method::GET, "/ui/image/ami-2")).await;
    assert_eq!(status, 404);
    assert!(body.contains("ami-2"), "{body}");
}

#[tokio::test]
async fn the_trail_is_newest_first_in_pages_linking_to_each_image() {
    let app = spawn_app().await;
    for i in 0..105 {
        create(&app, &format!("img-{i:03}"), "ec2", "n").await;
    }
    let (status, _, body) = page(app.admin().request(Method::GET, "/ui/audit")).await;
    assert_eq!(status, 200);
    assert_eq!(body.matches("<tr data-seq=").count(), 100);
    let newest = body.find("href=\"image/img-104\"").unwrap();
    let older = body.find("href=\"image/img-103\"").unwrap();
    assert!(newest < older, "newest first");
    assert!(body.contains("href=\"audit?marker=6\""), "{body}");
    let (_, _, older) = page(app.admin().request(Method::GET, "/ui/audit?marker=6")).await;
    assert_eq!(older.matches("<tr data-seq=").count(), 5);
}

#[tokio::test]
async fn the_page_warns_when_the_password_travels_in_clear() {
    // Over loopback: no warning.
    let app = spawn_app().await;
    let (_, _, body) = page(app.admin().request(Method::GET, "/ui/")).await;
    assert!(!body.contains("plain HTTP"), "{body}");
    // Through a trusted proxy, for a client elsewhere: plain HTTP warns, HTTPS at the
    // proxy does not.
    let app = spawn_app_with(&config_with("trusted_proxies = [\"127.0.0.1\"]", "")).await;
    let elsewhere = app
        .admin()
        .request(Method::GET, "/ui/")
        .header("x-forwarded-for", "192.0.2.7");
    let (_, _, body) = page(elsewhere).await;
    assert!(body.contains("served over plain HTTP"), "{body}");
    let behind_https = app
        .admin()
        .request(Method::GET, "/ui/")
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-forwarded-proto", "https");
    let (_, _, body) = page(behind_https).await;
    assert!(!body.contains("plain HTTP"), "{body}");
}

#[tokio::test]
async fn ui_enabled_false_takes_every_page_away() {
    let app = spawn_app_with(&config_with("", "[ui]\nenabled = false")).await;
    for path in ["/", "/ui", "/ui/", "/ui/audit", "/ui/static/style.css"] {
        let (status, headers, _) = page(app.admin().request(Method::GET, path)).await;
        assert_eq!(status, 404, "{path}");
        assert!(header(&headers, "content-type").starts_with("application/json"));
    }
}

#[tokio::test]
async fn the_api_keeps_json_and_the_pages_speak_html() {
    let app = spawn_app().await;
    let (status, _, _) = page(
        app.admin()
            .request(Method::GET, "/v3/images")
            .header("accept", "text/html"),
    )
    .await;
    assert_eq!(status, 406, "the API does not speak HTML");
    let (status, _, _) = page(
        app.admin()
            .request(Method::GET, "/ui/")
            .header("accept", "application/json"),
    )
    .await;
    assert_eq!(status, 406, "a page is HTML only");
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let (status, _, _) = page(
        app.admin()
            .request(Method::GET, "/ui/")
            .header("accept", browser),
    )
    .await;
    assert_eq!(status, 200);
    // The pages are not in the API's document.
    let (_, openapi) = app.get("/v3/openapi.json").await;
    assert!(
        openapi["paths"]
            .as_object()
            .unwrap()
            .keys()
            .all(|p| !p.starts_with("/ui")),
        "{openapi}"
    );
}

/// The page's own HTML, styles, script and favicon, for an empty catalog: under
/// 50 KB, the budget.
#[tokio::test]
async fn an_empty_catalog_page_weighs_under_50_kb() {
    let app = spawn_app().await;
    let mut total = 0;
    for path in [
        "/ui/",
        "/ui/static/style.css",
        "/ui/static/live.js",
        "/ui/static/favicon.svg",
    ] {
        let response = app.admin().request(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        total += response.bytes().await.unwrap().len();
    }
    eprintln!("the empty catalog's page and its files: {total} bytes");
    assert!(total < 50 * 1024, "{total} bytes");
}

#[tokio::test]
async fn head_answers_as_get() {
    let app = spawn_app().await;
    let response = app
        .admin()
        .request(Method::HEAD, "/ui/")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(response.headers(), "content-type").starts_with("text/html"));
    assert!(response.bytes().await.unwrap().is_empty());
}
