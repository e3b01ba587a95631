//! The pages' HTML, as maud templates: checked when the crate compiles, and every
//! value spliced in is escaped (an image named `<script>` shows as text).
//!
//! Every link is relative, so the pages work behind a proxy under a sub-path: a page
//! knows how far it is below `/ui/` (`Frame::base`).

use maud::{DOCTYPE, Markup, html};

use crate::domain::change::AuditRecord;
use crate::domain::image::Image;

/// What every page shows around its content.
pub struct Frame<'a> {
    pub title: &'a str,
    /// From this page to `/ui/`: `""` or `"../"`.
    pub base: &'static str,
    /// The signed-in user, when there is one.
    pub user: Option<&'a str>,
    pub can_audit: bool,
    pub section: Section,
    /// The password travels in clear: plain HTTP from another host.
    pub in_clear: bool,
    /// What the script keeps live, as `data-` attributes on `<body>`.
    pub live: Option<Live<'a>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Catalog,
    Audit,
    Other,
}

/// What the page's script follows, and from where.
pub struct Live<'a> {
    /// `catalog` or `audit`.
    pub kind: &'static str,
    /// The highest durable seq as the page was read: the feed is followed after it.
    pub seq: u64,
    /// The catalog page's range and filter: ids after `after`, up to `until` (the last
    /// one shown, when more pages follow).
    pub after: Option<&'a str>,
    pub until: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub q: Option<&'a str>,
}

pub fn page(frame: &Frame, content: Markup) -> Markup {
    let base = frame.base;
    let api = format!("{base}../v3/");
    let live = frame.live.as_ref();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (frame.title) " · image-catalog" }
                link rel="icon" type="image/svg+xml" href={ (base) "static/favicon.svg" };
                link rel="stylesheet" href={ (base) "static/style.css" };
                @if live.is_some() {
                    script src={ (base) "static/live.js" } defer {}
                }
            }
            body data-api=(api) data-live=[live.map(|l| l.kind)]
                data-seq=[live.map(|l| l.seq)] data-after=[live.and_then(|l| l.after)]
                data-until=[live.and_then(|l| l.until)]
                data-provider=[live.and_then(|l| l.provider)] data-q=[live.and_then(|l| l.q)] {
                a.skip href="#content" { "Skip to content" }
                header.top {
                    a.brand href={ (base) "./" } {
                        img src={ (base) "static/favicon.svg" } alt="";
                        "image-catalog"
                    }
                    nav aria-label="Sections" {
                        a href={ (base) "./" }
                            aria-current=[(frame.section == Section::Catalog).then_some("page")] {
                            "Catalog"
                        }
                        @if frame.can_audit {
                            a href={ (base) "audit" }
                                aria-current=[(frame.section == Section::Audit).then_some("page")] {
                                "Audit trail"
                            }
                        }
                    }
                    @if let Some(user) = frame.user {
                        span.who { "Signed in as " strong { (user) } }
                    }
                }
                main #content {
                    @if frame.in_clear {
                        p.notice role="alert" {
                            "This page is served over plain HTTP: your password travels in \
                             clear to this server. Ask for TLS ([server] tls_cert and tls_key)."
                        }
                    }
                    (content)
                }
            }
        }
    }
}

/// The catalog page's content.
pub struct Catalog<'a> {
    pub images: &'a [Image],
    pub providers: &'a [String],
    pub provider: Option<&'a str>,
    pub q: &'a str,
    /// The query of the next page (`?…`), when more follow.
    pub next: Option<String>,
    /// Whether this is a later page (a marker was given).
    pub later: bool,
    /// Nothing is filtered and this is the first page.
    pub unfiltered: bool,
    /// Where the API is, as the client reached this server (`https://host:port`).
    pub origin: &'a str,
}

pub fn catalog(c: &Catalog) -> Markup {
    let empty = c.images.is_empty();
    html! {
        h1 { "Images" span.status #live role="status" aria-live="polite" {} }
        form.filters method="get" action="./" role="search" {
            label {
                "Provider"
                select name="provider" {
                    option value="" { "All providers" }
                    @for p in c.providers {
                        option value=(p) selected[c.provider == Some(p.as_str())] { (p) }
                    }
                }
            }
            label.grow {
                "Search id or name"
                input type="search" name="q" value=(c.q) maxlength="255"
                    placeholder="e.g. ubuntu";
            }
            button type="submit" { "Show" }
        }
        @if empty && c.unfiltered && !c.later {
            div.empty #empty {
                p { strong { "The catalog is empty." } " Add the first image with the API:" }
                pre { code {
                    "curl -u admin -H 'Content-Type: application/json' \\\n  -d '{\"id\": \"ami-0123456789abcdef0\", \"provider\": \""
                    (c.providers.first().map_or("ec2", String::as_str))
                    "\", \"remote_user\": \"ubuntu\", \"name\": \"Ubuntu 24.04\"}' \\\n  "
                    (c.origin) "/v3/image"
                } }
                p.muted { "It appears here as soon as it is stored." }
            }
        } @else {
            p.muted #empty hidden[!empty] { "No image matches." }
        }
        table.cards #images hidden[empty] {
            thead {
                tr {
                    th scope="col" { "Id" }
                    th scope="col" { "Provider" }
                    th scope="col" { "Remote user" }
                    th scope="col" { "Name" }
                }
            }
            tbody {
                @for image in c.images {
                    tr data-id=(image.id.as_str()) {
                        td data-label="Id" {
                            a href={ "image/" (segment(image.id.as_str())) } {
                                code { (image.id.as_str()) }
                            }
                        }
                        td data-label="Provider" { (image.provider.as_str()) }
                        td data-label="Remote user" { code { (image.remote_user.as_str()) } }
                        td data-label="Name" { (image.name.as_str()) }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if c.later {
                a href=(catalog_link(c.provider, c.q, None)) { "← First page" }
            }
            @if let Some(next) = &c.next {
                a rel="next" href=(next) { "Next page →" }
            }
        }
    }
}

/// A page of the catalog with this filter: the first, or the one after `marker`.
pub fn catalog_link(provider: Option<&str>, q: &str, marker: Option<&str>) -> String {
    let mut query = Vec::new();
    if let Some(p) = provider {
        query.push(format!("provider={}", component(p)));
    }
    if !q.is_empty() {
        query.push(format!("q={}", component(q)));
    }
    if let Some(marker) = marker {
        query.push(format!("marker={}", component(marker)));
    }
    if query.is_empty() {
        "./".into()
    } else {
        format!("./?{}", query.join("&"))
    }
}

/// One image's page content.
pub struct ImagePage<'a> {
    pub image: &'a Image,
    pub etag: &'a str,
    /// Its history, newest first; `None` when the user may not read the trail.
    pub history: Option<&'a [AuditRecord]>,
    /// More history than shown.
    pub more_history: bool,
}

pub fn image(p: &ImagePage) -> Markup {
    let image = p.image;
    html! {
        nav aria-label="Breadcrumb" { a href="../" { "Catalog" } " / " code { (image.id.as_str()) } }
        h1 { code { (image.id.as_str()) } }
        dl.fields {
            dt { "Provider" } dd { (image.provider.as_str()) }
            dt { "Remote user" } dd { code { (image.remote_user.as_str()) } }
            dt { "Name" } dd { (image.name.as_str()) }
            dt { "ETag" } dd { code { (p.etag) } }
            dt { "As JSON" } dd {
                a href={ "../../v3/image/" (segment(image.id.as_str())) } {
                    code { "GET /v3/image/" (image.id.as_str()) }
                }
            }
        }
        h2 { "History" }
        @match p.history {
            None => p.muted { "Its history needs the policy read_audit." },
            Some([]) => p.muted { "No record of it is held (pruned, or imported without its trail)." },
            Some(history) => {
                table.cards {
                    thead { tr {
                        th scope="col" { "When (UTC)" }
                        th scope="col" { "Who" }
                        th scope="col" { "What" }
                        th scope="col" { "Change" }
                    } }
                    tbody {
                        @for record in history {
                            tr {
                                td data-label="When" { time datetime=(record.time) { (when(&record.time)) } }
                                td data-label="Who" { (record.user) }
                                td data-label="What" { (record.method) }
                                td data-label="Change" { (change(record, true)) }
                            }
                        }
                    }
                }
                @if p.more_history {
                    p.muted { "Older records: " a href={ "../../v3/audit?id=" (component(image.id.as_str())) } { "the API" } "." }
                }
            }
        }
    }
}

/// The trail page's content.
pub struct Trail<'a> {
    pub records: &'a [AuditRecord],
    /// The query of the next (older) page, when more follow.
    pub next: Option<String>,
    pub later: bool,
    /// The user may see images (`read_images`): the changes' fields are shown.
    pub shows_images: bool,
}

pub fn trail(t: &Trail) -> Markup {
    html! {
        h1 { "Audit trail" span.status #live role="status" aria-live="polite" {} }
        p.muted #empty hidden[!t.records.is_empty()] { "No record yet." }
        table.cards #records hidden[t.records.is_empty()] {
            thead { tr {
                th scope="col" { "Seq" }
                th scope="col" { "When (UTC)" }
                th scope="col" { "Who" }
                th scope="col" { "What" }
                th scope="col" { "Image" }
                th scope="col" { "Change" }
            } }
            tbody {
                @for record in t.records {
                    tr data-seq=(record.seq) {
                        td data-label="Seq" { (record.seq) }
                        td data-label="When" { time datetime=(record.time) { (when(&record.time)) } }
                        td data-label="Who" { (record.user) }
                        td data-label="What" { (record.method) }
                        td data-label="Image" {
                            a href={ "image/" (segment(&record.id)) } { code { (record.id) } }
                        }
                        td data-label="Change" { (change(record, t.shows_images)) }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if t.later { a href="audit" { "← Newest" } }
            @if let Some(next) = &t.next { a rel="next" href=(next) { "Older records →" } }
        }
    }
}

/// What a record changed, field by field.
fn change(record: &AuditRecord, shows_images: bool) -> Markup {
    if !shows_images {
        return html! { span.muted { "—" } };
    }
    match (&record.before, &record.after) {
        (None, Some(after)) => html! { "created: " (after.name.as_str()) },
        (Some(before), None) => html! { "deleted: " (before.name.as_str()) },
        (Some(before), Some(after)) => {
            let fields = [
                (
                    "remote_user",
                    before.remote_user.as_str(),
                    after.remote_user.as_str(),
                ),
                ("name", before.name.as_str(), after.name.as_str()),
            ];
            html! {
                ul.change {
                    @for (field, was, became) in fields {
                        @if was != became {
                            li { (field) ": " del { (was) } " → " ins { (became) } }
                        }
                    }
                }
            }
        }
        (None, None) => html! { span.muted { "not recorded" } },
    }
}

/// An RFC 3339 time as people read it: `2026-12-03 16:50:02`.
fn when(time: &str) -> String {
    time.get(..19).unwrap_or(time).replacen('T', " ", 1)
}

/// An error page: what happened and what to do.
pub fn error(status: u16, reason: &str, message: &str, base: &str) -> Markup {
    html! {
        h1 { (status) " " (reason) }
        p { (message) }
        @match status {
            401 => p { "Sign in with your catalog user name and password (or a token as the \
                       password); " a href="" { "try again" } "." },
            403 => p { "An administrator grants policies to roles in config.toml." },
            429 => p { "Too many failed sign-ins from here: wait, then " a href="" { "try again" } "." },
            _ => p { a href={ (base) "./" } { "Back to the catalog" } },
        }
    }
}

/// Characters kept as they are in a path segment or a query value; the rest is
/// percent-encoded.
const KEPT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An id as one path segment.
pub fn segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, KEPT).to_string()
}

/// A value as a query component.
pub fn component(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, KEPT).to_string()
}
