//! The lifecycle's phases are tracing spans, nested as they happen (what a
//! `tracing-opentelemetry` layer turns into one trace of the shutdown): `start`, then
//! `shutdown` holding `lame_duck`, `drain`, `hooks` (a `hook_phase` per phase, a `hook` per
//! hook, with the hook's own events inside) and `drain_last`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lameduck::{Lifecycle, Phase, StartContext};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};

/// Each span's path from the root (`shutdown/hooks/hook_phase`) with its fields, and each
/// event's span path and message.
#[derive(Default, Clone)]
struct Recorded {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    events: Arc<Mutex<Vec<(String, String)>>>,
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

fn path<S: Subscriber + for<'a> LookupSpan<'a>>(ctx: &Context<'_, S>, id: &Id) -> String {
    let Some(span) = ctx.span(id) else {
        return String::new();
    };
    let names: Vec<&str> = span.scope().from_root().map(|s| s.name()).collect();
    names.join("/")
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorded {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        self.spans.lock().unwrap().push((path(&ctx, id), fields.0));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let at = ctx
            .event_span(event)
            .map(|span| path(&ctx, &span.id()))
            .unwrap_or_default();
        self.events.lock().unwrap().push((at, fields.0));
    }
}

#[test]
fn a_shutdown_is_one_tree_of_spans() {
    let recorded = Recorded::default();
    let subscriber = Registry::default().with(recorded.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let lifecycle = Lifecycle::new()
            .handle_signals(false)
            .lame_duck_delay(Duration::from_millis(20))
            .service("api", |ctx: StartContext| async move {
                let drain = ctx.drain();
                Ok(async move {
                    drain.draining().await;
                    Ok(())
                })
            })
            .service_drained_last("admin", |ctx: StartContext| async move {
                let drain = ctx.drain();
                Ok(async move {
                    drain.draining().await;
                    Ok(())
                })
            })
            .hook(Phase::FLUSH, "flush-cache", || async {
                tracing::info!("flushed 3 entries");
                Ok(())
            })
            .hook(Phase::CLOSE, "close-db", || async { Ok(()) });
        let handle = lifecycle.handle();
        let run = tokio::spawn(lifecycle.run());
        handle.wait_ready().await.unwrap();
        handle.shutdown();
        run.await.unwrap();
    });

    let spans = recorded.spans.lock().unwrap().clone();
    let paths: Vec<&str> = spans.iter().map(|(p, _)| p.as_str()).collect();
    for expected in [
        "start",
        "shutdown",
        "shutdown/lame_duck",
        "shutdown/drain",
        "shutdown/hooks",
        "shutdown/hooks/hook_phase",
        "shutdown/hooks/hook_phase/hook",
        "shutdown/drain_last",
    ] {
        assert!(paths.contains(&expected), "no span {expected}: {spans:?}");
    }
    let order: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| p.matches('/').count() == 1)
        .collect();
    assert_eq!(
        order,
        [
            "shutdown/lame_duck",
            "shutdown/drain",
            "shutdown/hooks",
            "shutdown/drain_last"
        ],
        "{spans:?}"
    );
    let field = |path: &str, text: &str| {
        spans
            .iter()
            .any(|(p, fields)| p == path && fields.contains(text))
    };
    assert!(field("shutdown", "trigger="), "{spans:?}");
    assert!(
        field("shutdown/hooks/hook_phase", "phase=flush"),
        "{spans:?}"
    );
    assert!(
        field("shutdown/hooks/hook_phase", "phase=close"),
        "{spans:?}"
    );
    assert!(
        field("shutdown/hooks/hook_phase/hook", "hook=flush-cache"),
        "{spans:?}"
    );
    assert!(
        field("shutdown/hooks/hook_phase/hook", "hook=close-db"),
        "{spans:?}"
    );

    // The hook's own event is inside its span; the drain's log lines inside the drain's.
    let events = recorded.events.lock().unwrap().clone();
    assert!(
        events.iter().any(
            |(at, e)| at == "shutdown/hooks/hook_phase/hook" && e.contains("flushed 3 entries")
        ),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(at, e)| at == "shutdown/drain" && e.contains("drain finished")),
        "{events:?}"
    );
}
