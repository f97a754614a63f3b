//! `topics apply`: creates what is missing, grows partitions, and is idempotent.

use linkwork_bus::topics::{apply, TopicsFile};
use linkwork_domain::ProviderId;

use crate::helpers::{stack, unique};

fn declaration(prefix: &str, partitions: i32) -> TopicsFile {
    TopicsFile::parse(&format!(
        r#"
topics:
  - name: {prefix}.events
    partitions: {partitions}
    retention: forever
    cleanup_policy: delete
    key: k
    value: v
    producers: [tests]
    consumers: [tests]
  - name: '{prefix}.provider.{{provider}}.referrals'
    per: provider
    partitions: 2
    retention: 90d
    cleanup_policy: delete
    key: k
    value: v
    producers: [tests]
    consumers: [tests]
"#
    ))
    .expect("declaration parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_what_is_missing_and_a_second_run_changes_nothing() {
    let stack = stack();
    let prefix = unique("it-apply");
    let providers = [
        ProviderId::parse("townley-connectors").unwrap(),
        ProviderId::parse("wellbeing-hub").unwrap(),
    ];

    let first = apply(&stack.kafka, &declaration(&prefix, 3), &providers)
        .await
        .unwrap();
    assert_eq!(
        first.created,
        vec![
            format!("{prefix}.events"),
            format!("{prefix}.provider.townley-connectors.referrals"),
            format!("{prefix}.provider.wellbeing-hub.referrals"),
        ]
    );
    assert!(first.to_string().contains("3 created"));

    let second = apply(&stack.kafka, &declaration(&prefix, 3), &providers)
        .await
        .unwrap();
    assert!(
        !second.changed_anything(),
        "second run changed something: {second}"
    );
    assert_eq!(second.unchanged.len(), 3);
    assert!(
        second.to_string().starts_with("nothing to change"),
        "{second}"
    );

    // Growing partitions needs CreatePartitions, which Tansu 0.6 does not implement; on
    // such a broker apply says so instead of failing.
    let grown = apply(&stack.kafka, &declaration(&prefix, 5), &providers)
        .await
        .unwrap();
    let unsupported = grown.warnings.iter().any(|warning| {
        warning.contains(&format!("{prefix}.events"))
            && warning.contains("does not support adding partitions")
    });
    assert!(
        grown.grown == vec![(format!("{prefix}.events"), 3, 5)]
            || (grown.grown.is_empty() && unsupported),
        "{grown:?}"
    );
    let shrunk = apply(&stack.kafka, &declaration(&prefix, 2), &providers)
        .await
        .unwrap();
    assert!(!shrunk.changed_anything());
    assert!(shrunk
        .warnings
        .iter()
        .any(|warning| warning.contains("cannot be removed")));
}
