//! Trace-correlated JSON log lines: the existing JSON shape (`timestamp`, `level`, the
//! message and every field flattened, `target`) plus `trace_id` and `span_id` of the
//! innermost enclosing span that has an OpenTelemetry context, so a log line can be found
//! from a trace and the other way round.
//!
//! Lines outside any traced span (and every line while self-telemetry is off) are written
//! exactly as before.
//!
//! Does not: decide what is logged (the filters in `crate::logging`).

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt as _;
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a JSON event formatter and appends `trace_id` / `span_id`.
///
/// The OpenTelemetry context of a span is reached through the subscriber's dispatch, which
/// `tracing` does not hand out while it is delivering an event (re-entrancy guard); the
/// formatter therefore gets a weak handle to it once it is built ([`DispatchSlot`]).
#[derive(Debug, Clone)]
pub struct TraceJson<F> {
    inner: F,
    dispatch: DispatchSlot,
}

/// Where the formatter finds the dispatch it runs in; filled after the subscriber is built.
#[derive(Debug, Clone, Default)]
pub struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

impl DispatchSlot {
    /// Points the formatter at `dispatch` (a weak reference: no cycle).
    pub fn set(&self, dispatch: &tracing::Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

impl<F> TraceJson<F> {
    /// Wraps `inner`, which must write one JSON object per event; ids are looked up through
    /// the dispatch put into `slot`.
    pub fn new(inner: F, slot: DispatchSlot) -> Self {
        TraceJson {
            inner,
            dispatch: slot,
        }
    }
}

/// Trace and span id (lowercase hex) of the innermost span around `event` that has a valid
/// OpenTelemetry span context.
fn ids<S, N>(ctx: &FmtContext<'_, S, N>, slot: &DispatchSlot) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    let dispatch = slot.0.get()?.upgrade()?;
    for span in scope {
        if let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch) {
            let otel_span = cx.span();
            let sc = otel_span.span_context();
            if sc.is_valid() {
                return Some((sc.trace_id().to_string(), sc.span_id().to_string()));
            }
        }
    }
    None
}

/// Inserts `,"trace_id":"…","span_id":"…"` before the closing brace of a one-line JSON
/// object (the formatter's trailing newline is kept).
pub fn splice_ids(line: &str, trace_id: &str, span_id: &str) -> Option<String> {
    let close = line.rfind('}')?;
    let (head, tail) = line.split_at(close);
    let sep = if head.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    Some(format!(
        "{head}{sep}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{tail}"
    ))
}

impl<S, N, F> FormatEvent<S, N> for TraceJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = ids(ctx, &self.dispatch) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match splice_ids(&line, &trace_id, &span_id) {
            Some(spliced) => writer.write_str(&spliced),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::splice_ids;

    #[test]
    fn ids_go_before_the_closing_brace() {
        let line = "{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"m\",\"target\":\"x\"}\n";
        let out = splice_ids(line, "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331").unwrap();
        assert_eq!(
            out,
            "{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"m\",\"target\":\"x\",\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\",\"span_id\":\"b7ad6b7169203331\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            splice_ids("{}", "a", "b").unwrap(),
            "{\"trace_id\":\"a\",\"span_id\":\"b\"}"
        );
        assert_eq!(splice_ids("not json", "a", "b"), None);
    }
}
