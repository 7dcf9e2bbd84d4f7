//! The operator dashboard: one HTML page with its script and stylesheet,
//! compiled into the binary so that it works with no internet (no CDN). It
//! reads the saga API (`/sagas`, `/sagas/stats`, `/sagas/{id}`) and calls
//! the operator endpoints with the admin token the user enters.

use poem::http::header;
use poem::{handler, Response, Route};

/// The page served at `/`.
pub const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// The page's script, served at `/ui/app.js`.
pub const APP_JS: &str = include_str!("dashboard/app.js");
/// The page's stylesheet, served at `/ui/app.css`.
pub const APP_CSS: &str = include_str!("dashboard/app.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        // The assets change only with the binary; a short cache is plenty.
        .header(header::CACHE_CONTROL, "public, max-age=60")
        .body(body)
}

#[handler]
fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

#[handler]
fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// The dashboard's assets, to be nested at `/ui`.
pub fn assets() -> Route {
    Route::new().at("/app.js", app_js).at("/app.css", app_css)
}
