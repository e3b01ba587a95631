//! The page for people in a real browser: headless Chromium through chromedriver
//! (`webdriver.rs`), on the real server. Outside CI, without Debian's `chromium` and
//! `chromium-driver`, each test says "skipped" by name.
//!
//! The browser sends the test user's Basic credentials with every request (CDP, see
//! `webdriver.rs`): what a browser does once its user has answered the password prompt.

use serde_json::json;

use crate::helpers::{
    ADMIN, READER, TestApp, config_text, default_users, policies_without_read_images, spawn_app,
    spawn_app_with,
};
use crate::webdriver::Browser;

async fn create(app: &TestApp, id: &str, provider: &str, name: &str) {
    let (status, body) = app
        .create(json!({"id": id, "provider": provider, "remote_user": "ubuntu", "name": name}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The ids of the catalog's rows, in page order.
async fn rows(browser: &Browser) -> Vec<String> {
    let ids = browser
        .execute(
            "return Array.from(document.querySelectorAll('#images tbody tr'), r => r.dataset.id)",
            vec![],
        )
        .await;
    serde_json::from_value(ids).unwrap()
}

/// Until the page's script follows the changes (its status says "Live").
async fn until_live(browser: &Browser) {
    browser
        .wait_until(
            "the page to follow the changes",
            "document.getElementById('live').dataset.state === 'live'",
        )
        .await;
}

/// What every page must keep: no console error, nothing from another origin.
async fn assert_clean(browser: &Browser, app: &TestApp) {
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let origins = browser.resource_origins().await;
    assert_eq!(
        origins,
        std::slice::from_ref(&app.address),
        "everything from the page's origin"
    );
}

#[tokio::test]
async fn the_catalog_lists_filters_searches_and_follows_changes_live() {
    let test = "the_catalog_lists_filters_searches_and_follows_changes_live";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let app = spawn_app().await;
    create(&app, "ami-b", "ec2", "Ubuntu 24.04").await;
    create(&app, "ami-d", "ec2", "Debian 12").await;
    create(&app, "os-f", "openstack", "Ubuntu for openstack").await;
    browser.basic_auth(ADMIN.0, ADMIN.1).await;

    browser.goto(&format!("{}/", app.address)).await;
    assert!(browser.url().await.ends_with("/ui/"), "/ leads to the page");
    assert_eq!(rows(&browser).await, ["ami-b", "ami-d", "os-f"]);
    assert_eq!(
        browser.texts("#images tbody tr:first-child td").await,
        ["ami-b", "ec2", "ubuntu", "Ubuntu 24.04"]
    );
    assert_eq!(
        browser.texts("#images thead th").await,
        ["Id", "Provider", "Remote user", "Name"]
    );

    // The provider filter, then the search on top of it.
    browser.select_option("select[name=provider]", "ec2").await;
    browser.click("form.filters button").await;
    browser
        .wait_until(
            "the filtered page",
            "location.search.includes('provider=ec2')",
        )
        .await;
    assert_eq!(rows(&browser).await, ["ami-b", "ami-d"]);
    browser.type_into("input[name=q]", "UBUNTU").await;
    browser.press_enter("input[name=q]").await;
    browser
        .wait_until("the searched page", "location.search.includes('q=UBUNTU')")
        .await;
    assert_eq!(rows(&browser).await, ["ami-b"]);
    assert_clean(&browser, &app).await;

    // Live, on the whole catalog: a new image takes its sorted place, a changed one
    // changes, a deleted one goes, without a reload.
    browser.goto(&format!("{}/ui/", app.address)).await;
    until_live(&browser).await;
    browser.execute("window.notReloaded = true", vec![]).await;
    create(&app, "ami-c", "ec2", "Created while you looked").await;
    let written = std::time::Instant::now();
    browser
        .wait_until(
            "ami-c in its place",
            "Array.from(document.querySelectorAll('#images tbody tr'), r => r.dataset.id).join() === 'ami-b,ami-c,ami-d,os-f'",
        )
        .await;
    // Measured, not asserted (the wait above only catches a hang); the issue asks for
    // 2 s.
    eprintln!(
        "a new image showed on the open page {:?} after its 200",
        written.elapsed()
    );
    let (status, _) = app
        .admin()
        .put("/v3/image/ami-d", json!({"name": "Debian 12, renamed"}))
        .await;
    assert_eq!(status, 200);
    browser
        .wait_until(
            "the new name",
            "document.querySelector('#images tr[data-id=\"ami-d\"] td:last-child').textContent === 'Debian 12, renamed'",
        )
        .await;
    let (status, _) = app.admin().delete("/v3/image/ami-b").await;
    assert_eq!(status, 200);
    browser
        .wait_until(
            "ami-b to go",
            "!document.querySelector('#images tr[data-id=\"ami-b\"]')",
        )
        .await;
    assert_eq!(rows(&browser).await, ["ami-c", "ami-d", "os-f"]);
    assert_eq!(
        browser
            .execute("return window.notReloaded === true", vec![])
            .await,
        true,
        "no reload"
    );
    assert_clean(&browser, &app).await;
}

#[tokio::test]
async fn a_live_search_page_takes_only_what_matches() {
    let test = "a_live_search_page_takes_only_what_matches";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let app = spawn_app().await;
    create(&app, "ami-1", "ec2", "Ubuntu").await;
    browser.basic_auth(READER.0, READER.1).await;
    browser
        .goto(&format!("{}/ui/?provider=ec2&q=ubuntu", app.address))
        .await;
    until_live(&browser).await;
    create(&app, "ami-0", "ec2", "Debian").await; // not its search
    create(&app, "os-2", "openstack", "Ubuntu").await; // not its provider
    create(&app, "ami-3", "ec2", "UBUNTU minimal").await; // its own
    browser
        .wait_until(
            "ami-3",
            "!!document.querySelector('#images tr[data-id=\"ami-3\"]')",
        )
        .await;
    assert_eq!(rows(&browser).await, ["ami-1", "ami-3"]);
    // Renamed out of the search: it leaves the page.
    let (status, _) = app
        .admin()
        .put("/v3/image/ami-1", json!({"name": "Fedora"}))
        .await;
    assert_eq!(status, 200);
    browser
        .wait_until(
            "ami-1 to leave",
            "!document.querySelector('#images tr[data-id=\"ami-1\"]')",
        )
        .await;
    assert_eq!(rows(&browser).await, ["ami-3"]);
    assert_clean(&browser, &app).await;
}

/// A policy taken away ends the stream; the script says why and tries again, slower
/// each time; once the policy is back it follows on from the last change it showed,
/// and misses none made meanwhile.
#[tokio::test]
async fn the_page_reconnects_after_a_refusal_and_misses_nothing() {
    let test = "the_page_reconnects_after_a_refusal_and_misses_nothing";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let app = spawn_app().await;
    create(&app, "ami-1", "ec2", "One").await;
    browser.basic_auth(READER.0, READER.1).await;
    browser.goto(&format!("{}/ui/", app.address)).await;
    until_live(&browser).await;
    let with = config_text(crate::helpers::DEFAULT_POLICIES, &default_users());
    app.reload(&config_text(
        &policies_without_read_images(),
        &default_users(),
    ))
    .await;
    browser
        .wait_until(
            "the refusal to show",
            "document.getElementById('live').textContent.includes('403')",
        )
        .await;
    create(&app, "ami-2", "ec2", "Made while refused").await;
    app.reload(&with).await;
    browser
        .wait_until(
            "ami-2 after the reconnect",
            "!!document.querySelector('#images tr[data-id=\"ami-2\"]')",
        )
        .await;
    until_live(&browser).await;
    assert_eq!(rows(&browser).await, ["ami-1", "ami-2"]);
    // The refusals were console errors of the failed fetches, nothing else.
    for error in browser.console_errors().await {
        assert!(
            error["message"].as_str().unwrap().contains("403"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn an_image_shows_its_history_and_the_trail_grows_live() {
    let test = "an_image_shows_its_history_and_the_trail_grows_live";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let app = spawn_app().await;
    create(&app, "ami-1", "ec2", "First").await;
    let (status, _) = app
        .admin()
        .put("/v3/image/ami-1", json!({"name": "Second"}))
        .await;
    assert_eq!(status, 200);
    browser.basic_auth(ADMIN.0, ADMIN.1).await;
    browser.goto(&format!("{}/ui/", app.address)).await;
    browser.click("#images a").await;
    browser
        .wait_until(
            "the image's page",
            "location.pathname.endsWith('/ui/image/ami-1')",
        )
        .await;
    let fields = browser.texts("dl.fields dd").await;
    assert_eq!(fields[..3], ["ec2", "ubuntu", "Second"]);
    assert!(fields[3].starts_with('"'), "the ETag: {fields:?}");
    let history = browser.texts("table tbody tr td:nth-child(3)").await;
    assert_eq!(history, ["PUT", "POST"], "newest first");
    let change = browser
        .texts("table tbody tr:first-child td:last-child")
        .await;
    assert_eq!(change, ["name: First → Second"]);
    assert_clean(&browser, &app).await;

    browser.click("header nav a[href='../audit']").await;
    browser
        .wait_until("the trail", "location.pathname.endsWith('/ui/audit')")
        .await;
    assert_eq!(
        browser.texts("#records tbody tr td:first-child").await,
        ["2", "1"]
    );
    until_live(&browser).await;
    create(&app, "ami-2", "openstack", "Third").await;
    browser
        .wait_until(
            "the new record on top",
            "document.querySelector('#records tbody tr').dataset.seq === '3'",
        )
        .await;
    let mut cells = browser.texts("#records tbody tr:first-child td").await;
    let when = cells.remove(1);
    assert!(when.starts_with("20") && when.len() == 19, "{when}");
    assert_eq!(cells, ["3", "admin", "POST", "ami-2", "created: Third"]);
    // Each record links to its image.
    browser.click("#records tbody tr:first-child a").await;
    browser
        .wait_until(
            "the new image's page",
            "location.pathname.endsWith('/ui/image/ami-2')",
        )
        .await;
    assert_clean(&browser, &app).await;
}

#[tokio::test]
async fn a_name_made_of_html_shows_as_text_and_runs_nothing() {
    let test = "a_name_made_of_html_shows_as_text_and_runs_nothing";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let app = spawn_app().await;
    let hostile = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";
    create(&app, "ami-1", "ec2", hostile).await;
    browser.basic_auth(ADMIN.0, ADMIN.1).await;
    for path in ["/ui/", "/ui/image/ami-1", "/ui/audit"] {
        browser.goto(&format!("{}{path}", app.address)).await;
        let shown = browser
            .execute(
                "return document.body.innerText.includes(arguments[0])",
                vec![json!(hostile)],
            )
            .await;
        assert_eq!(shown, true, "{path}: the name as text");
        assert_eq!(
            browser
                .execute(
                    "return document.querySelectorAll('main img, main script').length",
                    vec![]
                )
                .await,
            0,
            "{path}: no element made from it"
        );
        assert_eq!(
            browser
                .execute("return window.pwned === undefined", vec![])
                .await,
            true,
            "{path}"
        );
    }
    // Inserted live too: the script writes text, never HTML.
    browser.goto(&format!("{}/ui/", app.address)).await;
    until_live(&browser).await;
    create(&app, "ami-2", "ec2", hostile).await;
    browser
        .wait_until(
            "ami-2",
            "!!document.querySelector('#images tr[data-id=\"ami-2\"]')",
        )
        .await;
    assert_eq!(
        browser
            .texts("#images tr[data-id=\"ami-2\"] td:last-child")
            .await,
        [hostile]
    );
    assert_eq!(
        browser
            .execute("return window.pwned === undefined", vec![])
            .await,
        true
    );
    assert_clean(&browser, &app).await;
}

#[tokio::test]
async fn without_credentials_401_and_without_read_images_403() {
    let test = "without_credentials_401_and_without_read_images_403";
    let Some(browser) = Browser::start(test).await else {
        return;
    };
    let app = spawn_app_with(&config_text(
        &policies_without_read_images(),
        &default_users(),
    ))
    .await;
    // No credentials: a 401 that asks (a person gets the browser's password prompt;
    // headless Chromium shows nothing).
    browser.goto(&format!("{}/ui/", app.address)).await;
    let status = browser
        .execute(
            "return performance.getEntriesByType('navigation')[0].responseStatus",
            vec![],
        )
        .await;
    assert_eq!(status, 401);
    browser.basic_auth(READER.0, READER.1).await;
    browser.goto(&format!("{}/ui/", app.address)).await;
    assert_eq!(browser.texts("h1").await, ["403 Forbidden"]);
    let text = browser.texts("main").await.join(" ");
    assert!(text.contains("read_images"), "{text}");
    // The page's own styles loaded (no credentials needed for them).
    let styled = browser
        .execute(
            "return getComputedStyle(document.querySelector('header.top')).display",
            vec![],
        )
        .await;
    assert_eq!(styled, "flex");
}
