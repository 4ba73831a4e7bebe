//! The console's HTML (maud: every interpolated value is escaped) and its
//! one stylesheet. No script anywhere.

use axum::{
    http::{StatusCode, header},
    response::IntoResponse,
};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::pages::{CustomersQuery, EditForm, Outcome};
use crate::{
    domain::{Customer, FieldViolation, State},
    storage::{
        apps::{App, KeyRecord},
        events::HistoryEntry,
    },
};

const STYLESHEET: &str = include_str!("console.css");

pub async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
}

/// What every signed-in page shows around its content.
pub struct Chrome<'a> {
    pub csrf: Option<String>,
    pub app: Option<&'a App>,
}

/// A notice at the top of a page.
pub enum Flash<'a> {
    Done(&'a str),
    Refused(&'a str),
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn csrf_field(chrome: &Chrome) -> Markup {
    html! { input type="hidden" name="csrf" value=(chrome.csrf.as_deref().unwrap_or_default()); }
}

fn layout(title: &str, chrome: &Chrome, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Customers console" }
                link rel="stylesheet" href="/admin/static/console.css";
            }
            body {
                header {
                    a.brand href="/admin/apps" { "Customers console" }
                    @if let Some(app) = chrome.app {
                        nav {
                            span.app { (app.name) " " code { (app.app_id()) } }
                            a href={ "/admin/apps/" (app.app_id()) "/customers" } { "Customers" }
                            a href={ "/admin/apps/" (app.app_id()) "/keys" } { "API keys" }
                        }
                    }
                    @if chrome.csrf.is_some() {
                        form.logout method="post" action="/admin/logout" {
                            (csrf_field(chrome))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn flash(flash: &Option<Flash>) -> Markup {
    html! {
        @match flash {
            Some(Flash::Done(text)) => p.flash.done role="status" { (text) },
            Some(Flash::Refused(text)) => p.flash.refused role="alert" { (text) },
            None => {},
        }
    }
}

fn violations(list: &[FieldViolation]) -> Markup {
    html! {
        @if !list.is_empty() {
            ul.violations role="alert" {
                @for v in list { li { code { (v.field) } ": " (v.description) } }
            }
        }
    }
}

pub fn message_page(status: StatusCode, message: &str) -> Markup {
    let chrome = Chrome {
        csrf: None,
        app: None,
    };
    layout(
        status.canonical_reason().unwrap_or("Error"),
        &chrome,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p.message { (message) }
            p { a href="/admin/apps" { "Back to the apps" } }
        },
    )
}

pub fn login(nonce: &str, error: Option<&str>) -> Markup {
    let chrome = Chrome {
        csrf: None,
        app: None,
    };
    layout(
        "Sign in",
        &chrome,
        html! {
            h1 { "Sign in" }
            @if let Some(error) = error { p.flash.refused role="alert" { (error) } }
            form.login method="post" action="/admin/login" {
                input type="hidden" name="csrf" value=(nonce);
                label { "Operator token" input type="password" name="token" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
            p.hint { "The token is the file given by --admin-token-file; in development mode the start-up log prints a link that signs you in." }
        },
    )
}

pub fn apps(chrome: &Chrome, apps: &[App]) -> Markup {
    layout(
        "Apps",
        chrome,
        html! {
            h1 { "Apps" }
            table {
                thead { tr { th { "Name" } th { "Id" } th { "Created" } th {} } }
                tbody {
                    @for app in apps {
                        tr {
                            td { a href={ "/admin/apps/" (app.app_id()) "/customers" } { (app.name) } }
                            td { code { (app.app_id()) } }
                            td { (time(app.create_time)) }
                            td { a href={ "/admin/apps/" (app.app_id()) "/keys" } { "API keys" } }
                        }
                    }
                }
            }
        },
    )
}

fn state_badge(state: State) -> Markup {
    html! { span class={ "state " (state.as_str()) } { (state.as_str()) } }
}

pub fn customers(
    chrome: &Chrome,
    query: &CustomersQuery,
    rows: &[Customer],
    next: Option<&str>,
    errors: &[FieldViolation],
) -> Markup {
    let app = chrome.app.expect("an app page");
    let base = format!("/admin/apps/{}/customers", app.app_id());
    let first = {
        let mut first = query.clone();
        first.after.clear();
        first.encode()
    };
    layout(
        "Customers",
        chrome,
        html! {
            h1 { "Customers" }
            form.filters method="get" action=(base) {
                label.search { "Search" input type="search" name="q" value=(query.q) placeholder="email, name, external id…"; }
                label { "Email" input type="email" name="email" value=(query.email); }
                label { "Created from" input type="date" name="from" value=(query.from); }
                label { "to" input type="date" name="to" value=(query.to); }
                label { "Metadata key" input type="text" name="meta_key" value=(query.meta_key); }
                label { "value" input type="text" name="meta_value" value=(query.meta_value); }
                label { "State"
                    select name="state" {
                        option value="" selected[query.state != "all"] { "Active" }
                        option value="all" selected[query.state == "all"] { "Active and archived" }
                    }
                }
                label { "Order"
                    select name="order" {
                        option value="" selected[query.order != "oldest"] { "Newest first" }
                        option value="oldest" selected[query.order == "oldest"] { "Oldest first" }
                    }
                }
                button type="submit" { "Search" }
                a href=(base) { "Clear" }
            }
            (violations(errors))
            table.customers {
                thead { tr { th { "Email" } th { "Name" } th { "State" } th { "Created" } } }
                tbody {
                    @for c in rows {
                        tr {
                            td { a href={ (base) "/" (c.id) } { (c.fields.email) } }
                            td { (c.fields.name.as_deref().unwrap_or_default()) }
                            td { (state_badge(c.state)) }
                            td { (time(c.create_time)) }
                        }
                    }
                }
            }
            @if rows.is_empty() && errors.is_empty() { p.empty { "No customers match." } }
            nav.pages {
                @if !query.after.is_empty() {
                    a.first href={ (base) "?" (first) } { "First page" }
                }
                @if let Some(next) = next {
                    a.next rel="next" href={ (base) "?" (next) } { "Next page" }
                }
            }
        },
    )
}

fn field(label: &str, name: &str, value: &str) -> Markup {
    html! { label { (label) input type="text" name=(name) value=(value); } }
}

pub fn customer(
    chrome: &Chrome,
    c: &Customer,
    history: &[HistoryEntry],
    outcome: Outcome,
) -> Markup {
    let app = chrome.app.expect("an app page");
    let base = format!("/admin/apps/{}/customers/{}", app.app_id(), c.id);
    let f = &c.fields;
    let a = &f.address;
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    // The form shows the edits that were not saved, else the customer.
    let current;
    let form: &EditForm = match outcome.unsaved {
        Some(unsaved) => unsaved,
        None => {
            current = EditForm::of(c);
            &current
        }
    };
    let form_values = [
        ("Email", "email", &form.email),
        ("Name", "name", &form.name),
        ("External id", "external_id", &form.external_id),
        ("Phone", "phone", &form.phone),
        ("Time zone", "timezone", &form.timezone),
        ("Address line 1", "line1", &form.line1),
        ("Address line 2", "line2", &form.line2),
        ("City", "city", &form.city),
        ("State / region", "state", &form.state),
        ("Postal code", "postal_code", &form.postal_code),
        ("Country", "country", &form.country),
    ];
    layout(
        &f.email,
        chrome,
        html! {
            p.crumbs { a href={ "/admin/apps/" (app.app_id()) "/customers" } { "← Customers" } }
            h1 { @if f.email.is_empty() { "(erased customer)" } @else { (f.email) } " " (state_badge(c.state)) }
            (flash(&outcome.flash))
            (violations(&outcome.violations))
            dl.fields {
                dt { "Id" } dd { code.id { (c.id) } }
                dt { "External id" } dd { (opt(&f.external_id)) }
                dt { "Email" } dd.email { (f.email) }
                dt { "Name" } dd.name { (opt(&f.name)) }
                dt { "Phone" } dd { (opt(&f.phone)) }
                dt { "Time zone" } dd { (opt(&f.timezone)) }
                dt { "Address" } dd {
                    @for part in [&a.line1, &a.line2, &a.city, &a.state, &a.postal_code, &a.country].into_iter().flatten() {
                        (part) br;
                    }
                }
                dt { "Metadata" } dd { @for (k, v) in &f.metadata { code { (k) } " = " (v) br; } }
                dt { "Provider ids" } dd { @for (k, v) in &f.provider_ids { code { (k) } " = " (v) br; } }
                dt { "State" } dd.lifecycle { (c.state.as_str()) }
                dt { "Created" } dd { (time(c.create_time)) }
                dt { "Updated" } dd { (time(c.update_time)) }
                @if let Some(t) = c.archive_time { dt { "Archived" } dd.archived { (time(t)) } }
                @if let Some(t) = c.delete_time { dt { "Erased" } dd { (time(t)) } }
                dt { "Etag" } dd { code.etag { (c.etag()) } }
            }
            @if c.state == State::Active {
                section.edit {
                    h2 { "Edit" }
                    form.edit method="post" action={ (base) "/edit" } {
                        (csrf_field(chrome))
                        // A conflict keeps the etag the edits were made
                        // against, so that saving again is refused again
                        // until the operator reloads.
                        input type="hidden" name="etag" value=(form.etag);
                        @for (label, name, value) in form_values { (field(label, name, value)) }
                        label { "Metadata (one key=value per line)" textarea name="metadata" rows="4" { (form.metadata) } }
                        label { "Provider ids (one provider=id per line)" textarea name="provider_ids" rows="3" { (form.provider_ids) } }
                        button type="submit" { "Save" }
                    }
                }
                section.archive {
                    h2 { "Archive" }
                    p { "An archived customer stays readable but can no longer be changed; its email and ids are free for a new customer." }
                    form method="post" action={ (base) "/archive" } {
                        (csrf_field(chrome))
                        input type="hidden" name="etag" value=(c.etag());
                        button.warn type="submit" { "Archive this customer" }
                    }
                }
            }
            @if c.state != State::Deleted {
                section.erase {
                    h2 { "Erase" }
                    p { "Erasing removes every personal field, here and in past change events, for good. Type the customer's email to confirm." }
                    form method="post" action={ (base) "/erase" } {
                        (csrf_field(chrome))
                        input type="hidden" name="etag" value=(c.etag());
                        label { "Email" input type="text" name="confirm_email" autocomplete="off" required; }
                        button.danger type="submit" { "Erase this customer" }
                    }
                }
            }
            section.history {
                h2 { "History" }
                table {
                    thead { tr { th { "Position" } th { "Event" } th { "Changed" } th { "API key" } th { "Time" } } }
                    tbody {
                        @for e in history {
                            tr {
                                td { @if let Some(p) = e.position { (p) } @else { "…" } }
                                td { (e.kind) }
                                td { (e.changed_fields.join(", ")) }
                                td { @if let Some(k) = e.key() { code { (k) } } @else { "console or admin" } }
                                td { (time(e.create_time)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn keys(
    chrome: &Chrome,
    keys: &[KeyRecord],
    now: DateTime<Utc>,
    notice: Option<Flash>,
    new_key: Option<&str>,
) -> Markup {
    let app = chrome.app.expect("an app page");
    let base = format!("/admin/apps/{}/keys", app.app_id());
    layout(
        "API keys",
        chrome,
        html! {
            h1 { "API keys" }
            (flash(&notice))
            @if let Some(key) = new_key {
                p.new-key { "New key: " code.secret { (key) } }
            }
            table.keys {
                thead { tr { th { "Id" } th { "Prefix" } th { "Created" } th { "Expires" } th {} } }
                tbody {
                    @for k in keys {
                        @let live = k.expire_time.is_none_or(|t| t > now);
                        tr class=(if live { "live" } else { "expired" }) {
                            td { code { (k.key_id()) } }
                            td { code { (k.prefix) "…" } }
                            td { (time(k.create_time)) }
                            td {
                                @match k.expire_time {
                                    Some(t) if t <= now => { "expired " (time(t)) }
                                    Some(t) => { (time(t)) }
                                    None => { "never" }
                                }
                            }
                            td.actions {
                                @if live {
                                    form method="post" action={ (base) "/" (k.key_id()) "/rotate" } {
                                        (csrf_field(chrome))
                                        label { "overlap" input type="text" name="overlap" value="24h" size="5"; }
                                        button type="submit" { "Rotate" }
                                    }
                                    form method="post" action={ (base) "/" (k.key_id()) "/revoke" } {
                                        (csrf_field(chrome))
                                        button.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action=(base) {
                (csrf_field(chrome))
                button type="submit" { "Create a key" }
            }
        },
    )
}
