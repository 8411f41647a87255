//! The web console and the browser client module, embedded in the binary so
//! users need no build step (files under `web/`).

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

use super::body::{full, ResponseBody};

#[derive(Clone, Copy, Debug)]
pub enum Asset {
    ConsolePage,
    ConsoleScript,
    ConsoleStyle,
    ClientScript,
}

impl Asset {
    fn contents(self) -> (&'static str, &'static str) {
        match self {
            Asset::ConsolePage => (
                include_str!("../../web/index.html"),
                "text/html; charset=utf-8",
            ),
            Asset::ConsoleScript => (
                include_str!("../../web/console.js"),
                "text/javascript; charset=utf-8",
            ),
            Asset::ConsoleStyle => (
                include_str!("../../web/console.css"),
                "text/css; charset=utf-8",
            ),
            Asset::ClientScript => (
                include_str!("../../web/client.js"),
                "text/javascript; charset=utf-8",
            ),
        }
    }
}

pub fn serve(asset: Asset) -> Response<ResponseBody> {
    let (body, content_type) = asset.contents();
    let mut response = Response::new(full(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}
