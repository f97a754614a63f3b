//! W3C trace context crosses Kafka: the span that produced a message is the parent
//! of the span opened when consuming it.

use std::time::Duration;

use chrono::Utc;
use linkwork_bus::{
    CloudEvent, ConsumerConfig, ConsumerRunner, Effects, Handler, HandlerError, Incoming, Producer,
};
use linkwork_domain::{CallLogEvent, DomainEvent};
use linkwork_store::sqlx::{self, PgConnection};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::{case_opened, eventually, stack, unique};

struct CountOpenings;

impl Handler for CountOpenings {
    type Message = CloudEvent<CallLogEvent>;

    async fn handle(
        &mut self,
        transaction: &mut PgConnection,
        batch: &[Incoming<'_, Self::Message>],
        _effects: &mut Effects,
    ) -> Result<(), HandlerError> {
        sqlx::query("UPDATE seen SET count = count + $1")
            .bind(batch.len() as i64)
            .execute(&mut *transaction)
            .await?;
        Ok(())
    }
}

// A current-thread runtime: the consumer's tasks run on this thread, where the test's
// subscriber is the default.
#[tokio::test]
async fn the_span_that_produced_a_message_is_the_parent_of_the_span_that_consumed_it() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let stack = stack();
    let pool = stack.database().await;
    sqlx::raw_sql("CREATE TABLE seen (count BIGINT NOT NULL); INSERT INTO seen VALUES (0)")
        .execute(&pool)
        .await
        .unwrap();
    let topic = stack.topic("it.trace", 1).await;
    let producer = Producer::new(&stack.kafka).unwrap();

    let submit = tracing::info_span!("submit-referral");
    let submit_context = submit.context().span().span_context().clone();
    assert!(
        submit_context.is_valid(),
        "the producing span has a trace context"
    );
    let event = case_opened(1);
    producer
        .publish(
            &topic,
            event.derived_id(),
            "linkwork/tests",
            Utc::now(),
            &event,
        )
        .instrument(submit.clone())
        .await
        .unwrap();
    drop(submit);

    let shutdown = CancellationToken::new();
    let runner = ConsumerRunner::new(
        ConsumerConfig::new(&unique("trace"), &[&topic]),
        stack.kafka.clone(),
        pool.clone(),
        CountOpenings,
    );
    let task = tokio::spawn(runner.run(shutdown.clone()));
    eventually(
        Duration::from_secs(60),
        "the event to be consumed",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count FROM seen")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        },
    )
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let consume = spans
        .iter()
        .find(|span| span.name == "consume")
        .unwrap_or_else(|| {
            panic!(
                "a consume span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        consume.span_context.trace_id(),
        submit_context.trace_id(),
        "same trace"
    );
    assert_eq!(
        consume.parent_span_id,
        submit_context.span_id(),
        "the producer's span is the parent"
    );
    let _ = event.event_type();
}
