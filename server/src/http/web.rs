//! The web UI (`web/`, built into `web/dist/` and embedded at compile time, so running the server needs no
//! Node): every GET that no API route took. A file of the build is served as itself; any other path is a
//! client route and gets `index.html` (SPA fallback), except API paths (`/v1/…`, `/api/…`, `/health`,
//! `/.well-known/…`) and missing `/assets/…`, which keep the JSON 404. Hashed assets are cached for a year
//! (`immutable`), `index.html` is revalidated (`no-cache`); the `.br` / `.gz` made at build time are sent per
//! `Accept-Encoding`. Every answer carries a Content-Security-Policy with no inline script and no framing.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "../web/dist"]
struct Dist;

/// No inline script or style, nothing from elsewhere, never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The router's fallback: the UI for GET and HEAD outside the API, the JSON 404 otherwise.
pub async fn serve(req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if !(method == Method::GET || method == Method::HEAD) || is_api(&path) {
        return super::not_found(req).await.into_response();
    }
    let file = path.trim_start_matches('/');
    let (name, body) = match Dist::get(file) {
        Some(found) if !file.is_empty() => (file, found),
        _ if file.starts_with("assets/") => return super::not_found(req).await.into_response(),
        _ => match Dist::get("index.html") {
            Some(index) => ("index.html", index),
            None => return super::not_found(req).await.into_response(),
        },
    };
    // Weak: the br, gzip and identity forms of a file share it.
    let etag = format!("W/\"{}\"", hex::encode(body.metadata.sha256_hash()));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let (encoding, bytes) = match pick_encoding(req.headers()) {
        Some((enc, ext)) => match Dist::get(&format!("{name}.{ext}")) {
            Some(packed) => (Some(enc), packed.data),
            None => (None, body.data),
        },
        None => (None, body.data),
    };
    let mut resp = Response::new(if method == Method::HEAD || fresh {
        Body::empty()
    } else {
        Body::from(bytes.into_owned())
    });
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if name.starts_with("assets/") {
            IMMUTABLE
        } else {
            "no-cache"
        }),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(enc) = encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    security_headers(h);
    if fresh {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    resp
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Paths that belong to the API and never fall back to the UI.
fn is_api(path: &str) -> bool {
    ["/v1", "/api", "/health", "/.well-known"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// The best precompressed form the client accepts: brotli, then gzip (`q=0` refuses one).
fn pick_encoding(headers: &HeaderMap) -> Option<(&'static str, &'static str)> {
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accepts = |name: &str| {
        accept.split(',').any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case(name) && !refused
        })
    };
    if accepts("br") {
        Some(("br", "br"))
    } else if accepts("gzip") {
        Some(("gzip", "gz"))
    } else {
        None
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn brotli_is_preferred_then_gzip_and_q0_refuses() {
        assert_eq!(
            pick_encoding(&accept("gzip, deflate, br")),
            Some(("br", "br"))
        );
        assert_eq!(
            pick_encoding(&accept("gzip;q=1, br;q=0")),
            Some(("gzip", "gz"))
        );
        assert_eq!(pick_encoding(&accept("identity")), None);
        assert_eq!(pick_encoding(&HeaderMap::new()), None);
    }

    #[test]
    fn api_paths_never_fall_back() {
        for p in [
            "/v1",
            "/v1/nope",
            "/health",
            "/health/x",
            "/api/version",
            "/.well-known/x",
        ] {
            assert!(is_api(p), "{p}");
        }
        for p in ["/", "/sessions/abc", "/hosts", "/new", "/v1x", "/healthy"] {
            assert!(!is_api(p), "{p}");
        }
    }

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        serve(req.body(Body::empty()).unwrap()).await
    }

    #[tokio::test]
    async fn client_routes_get_index_html_and_api_paths_their_json_404() {
        let index = get("/sessions/abc", &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(index.status(), StatusCode::OK);
        let h = index.headers();
        assert_eq!(h[header::CONTENT_ENCODING], "br");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        let again = get("/", &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        for path in ["/v1/nope", "/health/x", "/api/x", "/assets/missing.js"] {
            let r = get(path, &[]).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(
                r.headers()[header::CONTENT_TYPE],
                "application/json",
                "{path}"
            );
        }
        let post = serve(
            Request::builder()
                .method(Method::POST)
                .uri("/sessions/abc")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(post.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn hashed_assets_are_immutable() {
        let html = String::from_utf8(Dist::get("index.html").unwrap().data.into_owned()).unwrap();
        let start = html.find("/assets/").unwrap();
        let end = start + html[start..].find('"').unwrap();
        let r = get(&html[start..end], &[("accept-encoding", "gzip")]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CACHE_CONTROL], IMMUTABLE);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let plain = get(&html[start..end], &[]).await;
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[test]
    fn the_build_is_embedded_with_its_compressed_forms() {
        let index = Dist::get("index.html").expect("web/dist/index.html is embedded");
        let html = String::from_utf8_lossy(&index.data);
        assert!(html.contains("/assets/"), "{html}");
        assert!(!html.contains("<script>"), "no inline script: {html}");
        assert!(Dist::get("index.html.br").is_some() && Dist::get("index.html.gz").is_some());
    }
}
