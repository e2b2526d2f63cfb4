//! W3C trace context (`traceparent` / `tracestate`) in and out: outgoing OTLP metric
//! requests carry the context of the current `tracing` span (HTTP headers and gRPC
//! metadata); an incoming scrape's headers give the parent of its span.
//!
//! With self-telemetry off the current span has no OpenTelemetry context, so nothing is
//! injected and incoming headers are ignored.
//!
//! Does not: create spans.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The OpenTelemetry context of the current `tracing` span, if it has a valid one.
fn current() -> Option<Context> {
    let cx = tracing::Span::current().context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// Adds `traceparent` (and `tracestate` when set) for the current span to HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    if let Some(cx) = current() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// Just the trace context headers of the current span (empty when it is not traced).
pub fn trace_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    inject_http(&mut headers);
    headers
}

/// Adds `traceparent` (and `tracestate` when set) for the current span to gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(cx) = current() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

/// The remote parent named by `traceparent` / `tracestate` in `headers` (an empty context
/// when they are missing or malformed).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    // The SDK's parser takes `00-1-2-01` or a 30-digit trace id (it never checks field
    // widths); W3C Trace Context says such a header is ignored.
    let well_formed = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_well_formed_traceparent);
    if !well_formed {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// W3C Trace Context §3.2.2: `version-traceid-parentid-flags` as exactly 2, 32, 16 and 2
/// lowercase hex digits; version `00` has nothing after the flags, a later version may
/// add `-…` fields.
fn is_well_formed_traceparent(value: &str) -> bool {
    let value = value.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    };
    let dash = |i: usize| bytes.get(i) == Some(&b'-');
    let fields =
        hex(0..2) && dash(2) && hex(3..35) && dash(35) && hex(36..52) && dash(52) && hex(53..55);
    fields
        && match &value[..2] {
            "00" => bytes.len() == 55,
            "ff" => false,
            _ => bytes.len() == 55 || dash(55),
        }
}

/// Makes `span` continue the trace named by `headers`' `traceparent`, if any. Call before
/// the span is first entered.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = extract_http(headers);
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// The `traceparent` value of the current span (for tests and diagnostics).
pub fn current_traceparent() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject_http(&mut headers);
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_fields_must_have_their_exact_widths() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(is_well_formed_traceparent(good));
        assert!(is_well_formed_traceparent(&format!(" {good} ")));
        // a later version may add fields
        assert!(is_well_formed_traceparent(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"
        ));
        for bad in [
            "00-1-2-01",
            "00-+af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "000-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-001",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "",
        ] {
            assert!(!is_well_formed_traceparent(bad), "{bad}");
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", http::HeaderValue::from_str(bad).unwrap());
            assert!(!extract_http(&h).span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn extracts_a_w3c_parent_and_ignores_garbage() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        let cx = extract_http(&h);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid());
        assert!(sc.is_remote());
        assert!(sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");

        h.insert("traceparent", http::HeaderValue::from_static("00-zz-yy-01"));
        assert!(!extract_http(&h).span().span_context().is_valid());
    }

    #[test]
    fn nothing_is_injected_without_a_traced_span() {
        let mut h = http::HeaderMap::new();
        inject_http(&mut h);
        assert!(h.is_empty());
        let mut m = tonic::metadata::MetadataMap::new();
        inject_grpc(&mut m);
        assert!(m.is_empty());
        assert_eq!(current_traceparent(), None);
    }
}
