use std::path::{Path, PathBuf};

use super::*;

fn repo_root() -> PathBuf {
    // Read at run time: one target directory serves several checkouts.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
}

fn declared() -> TopicsFile {
    TopicsFile::load(&repo_root().join("topics.yaml")).expect("topics.yaml parses")
}

#[test]
fn every_fixed_topic_in_code_is_declared_and_every_declared_topic_is_known() {
    let file = declared();
    let declared: Vec<&str> = file
        .topics
        .iter()
        .filter(|topic| topic.per.is_none())
        .map(|topic| topic.name.as_str())
        .collect();
    for name in fixed_topics() {
        assert!(
            declared.contains(&name.as_str()),
            "{name} is used in code but not declared in topics.yaml"
        );
    }
    for name in &declared {
        assert!(
            fixed_topics().iter().any(|known| known == name),
            "topics.yaml declares {name}, which no code uses"
        );
    }
    for (template, name) in [
        (TopicTemplate::Provider, PROVIDER_QUEUE_TEMPLATE),
        (TopicTemplate::Referrer, REFERRER_OUTCOMES_TEMPLATE),
    ] {
        let declared = file.topics.iter().find(|topic| topic.per == Some(template));
        assert_eq!(declared.map(|topic| topic.name.as_str()), Some(name));
    }
}

#[test]
fn every_consumer_has_a_declared_dead_letter_topic_with_a_finite_retention() {
    let file = declared();
    for consumer in consumers::ALL {
        let dead_letters = dlq(consumer);
        let declared = file
            .topics
            .iter()
            .find(|topic| topic.name == dead_letters)
            .unwrap_or_else(|| panic!("{dead_letters} is not declared"));
        // Dead letters hold refused messages as they were sent, identifiers and all:
        // they are deleted after a while, never kept for ever.
        let kept = retention_ms(&declared.retention).unwrap();
        assert!(
            (1..=90 * 86_400_000).contains(&kept),
            "{dead_letters} keeps its messages for {}",
            declared.retention
        );
    }
}

#[test]
fn schemas_named_in_topics_yaml_exist() {
    for topic in declared().topics {
        for schema in &topic.schemas {
            assert!(
                repo_root().join("schemas").join(schema).is_file(),
                "{}: schemas/{schema} is missing",
                topic.name
            );
        }
    }
}

/// String literals in the workspace's Rust sources.
fn string_literals(source: &str) -> Vec<String> {
    let mut literals = Vec::new();
    let mut chars = source.chars().peekable();
    let mut in_line_comment = false;
    while let Some(c) = chars.next() {
        if in_line_comment {
            in_line_comment = c != '\n';
            continue;
        }
        if c == '/' && chars.peek() == Some(&'/') {
            in_line_comment = true;
            continue;
        }
        if c == '\'' {
            // A char literal such as '"' must not open a string; lifetimes pass through.
            let mut lookahead = chars.clone();
            match (lookahead.next(), lookahead.next(), lookahead.next()) {
                (Some('\\'), Some(_), Some('\'')) => {
                    chars.next();
                    chars.next();
                    chars.next();
                }
                (Some(_), Some('\''), _) => {
                    chars.next();
                    chars.next();
                }
                _ => {}
            }
            continue;
        }
        if c == '"' {
            let mut literal = String::new();
            while let Some(inner) = chars.next() {
                match inner {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            literal.push(escaped);
                        }
                    }
                    '"' => break,
                    other => literal.push(other),
                }
            }
            literals.push(literal);
        }
    }
    literals
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// Shipped code names topics only through this module, so the checks above cover every
/// name in use. Integration tests (`tests/` directories) create throwaway topics of
/// their own and are not scanned.
#[test]
fn no_code_outside_this_module_writes_a_topic_name() {
    let declared: Vec<String> = declared()
        .topics
        .iter()
        .map(|topic| topic.name.clone())
        .collect();
    let topic_like = |literal: &str| {
        let suffixes = [
            ".referrals",
            ".events",
            ".dlq",
            ".inbound",
            ".responses",
            ".call-log",
            ".observations",
            ".pseudonymised",
            ".outcomes",
        ];
        literal.contains('.')
            && !literal.contains(' ')
            && !literal.contains('/')
            && suffixes.iter().any(|suffix| literal.ends_with(suffix))
    };
    let mut files = Vec::new();
    for dir in ["crates", "services"] {
        rust_files(&repo_root().join(dir), &mut files);
    }
    files.retain(|file| {
        !file
            .components()
            .any(|component| component.as_os_str() == "tests")
    });
    assert!(files.len() > 10, "found the workspace sources");
    let mut offenders = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(repo_root())
            .unwrap_or(&file)
            .to_path_buf();
        let in_topics_module = relative.ends_with("crates/bus/src/topics.rs")
            || relative.starts_with("crates/bus/src/topics/");
        if in_topics_module {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        for literal in string_literals(&source) {
            if declared.contains(&literal) || topic_like(&literal) {
                offenders.push(format!("{}: {literal:?}", relative.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "topic names written outside linkwork_bus::topics (use its constants):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_literal_scanner_finds_strings_and_skips_comments_and_chars() {
    let source = r#"let a = "referral.events"; // "in.comment.dlq"
        let b = '"'; let c = "x\"y"; fn f<'a>(s: &'a str) {}"#;
    assert_eq!(
        string_literals(source),
        vec!["referral.events".to_owned(), "x\"y".to_owned()]
    );
}

#[test]
fn templates_expand_once_per_provider_and_per_referrer() {
    let file = declared();
    let providers = [
        ProviderId::parse("townley-connectors").unwrap(),
        ProviderId::parse("wellbeing-hub").unwrap(),
    ];
    let referrers = [
        Source::parse("gp:A81001").unwrap(),
        Source::parse("org:townley-age-concern").unwrap(),
        Source::parse("self").unwrap(),
    ];
    let names: Vec<String> = file
        .expand(&Members {
            providers: &providers,
            referrers: &referrers,
        })
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for referrer in [
        "referrer.gp.A81001.outcomes",
        "referrer.org.townley-age-concern.outcomes",
        "referrer.self.outcomes",
    ] {
        assert!(names.contains(&referrer.to_owned()), "{referrer}");
    }
    assert_eq!(
        referrer_outcomes(&referrers[0]),
        "referrer.gp.A81001.outcomes"
    );
    assert!(names.contains(&"provider.townley-connectors.referrals".to_owned()));
    assert!(names.contains(&"provider.wellbeing-hub.referrals".to_owned()));
    assert!(!names.iter().any(|name| name.contains('{')));
    assert_eq!(
        provider_queue(&providers[0]),
        "provider.townley-connectors.referrals"
    );
}

#[test]
fn retention_parses() {
    assert_eq!(retention_ms("forever"), Ok(-1));
    assert_eq!(retention_ms("7d"), Ok(7 * 86_400_000));
    assert_eq!(retention_ms("12h"), Ok(12 * 3_600_000));
    assert!(retention_ms("7 days").is_err());
    assert!(retention_ms("0d").is_err());
    assert!(retention_ms("d").is_err());
}

#[test]
fn invalid_declarations_are_refused() {
    let base = "topics:\n  - {name: 'NAME', partitions: 1, retention: 1d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []EXTRA}\n";
    let case = |name: &str, extra: &str| {
        TopicsFile::parse(&base.replace("NAME", name).replace("EXTRA", extra))
    };
    assert!(case("good.topic", "").is_ok());
    assert!(case("bad topic", "").is_err());
    assert!(
        case("provider.{provider}.x", "").is_err(),
        "template without per"
    );
    assert!(case("provider.{provider}.x", ", per: provider").is_ok());
    assert!(case("referrer.{referrer}.x", ", per: referrer").is_ok());
    assert!(
        case("referrer.{referrer}.x", ", per: provider").is_err(),
        "the wrong template"
    );
    assert!(
        case("good.topic", ", colour: blue").is_err(),
        "unknown field"
    );
}

#[test]
fn the_shipped_declaration_orders_by_key_the_topics_whose_consumers_rely_on_it() {
    let file = declared();
    let ordered: Vec<&str> = file
        .topics
        .iter()
        .filter(|topic| topic.ordered_by_key)
        .map(|topic| topic.name.as_str())
        .collect();
    assert_eq!(
        ordered,
        vec![
            REFERRALS_INBOUND,
            REFERRAL_EVENTS,
            PROVIDER_QUEUE_TEMPLATE,
            TRIAGE_REFERRALS,
            PROVIDER_RESPONSES,
            ASC_CALL_LOG,
            AUDIT_EVENTS,
        ]
    );
    for consumer in consumers::ALL {
        let dead_letters = dlq(consumer);
        assert!(
            file.topics
                .iter()
                .any(|topic| topic.name == dead_letters && !topic.ordered_by_key),
            "{dead_letters} can grow"
        );
    }
}

#[test]
fn replication_is_capped_at_the_brokers_and_min_isr_at_the_replication() {
    let file = declared();
    let events = file
        .topics
        .iter()
        .find(|topic| topic.name == REFERRAL_EVENTS)
        .unwrap();
    let one_broker = file.settings(events, 1);
    assert_eq!(
        (
            one_broker.replication_factor,
            one_broker.min_insync_replicas
        ),
        (
            Capped {
                declared: 3,
                applied: 1
            },
            Capped {
                declared: 2,
                applied: 1
            }
        )
    );
    let production = file.settings(events, 5);
    assert_eq!(production.replication_factor.applied, 3);
    assert_eq!(production.min_insync_replicas.applied, 2);
    assert!(!production.min_insync_replicas.is_capped());
    assert_eq!(production.retention_ms, -1);
}

fn one_topic(extra: &str) -> Result<TopicsFile, BusError> {
    TopicsFile::parse(&format!(
        "{extra}topics:\n  - {{name: t, partitions: 1, retention: 1d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}}\n"
    ))
}

fn one_topic_with(fields: &str) -> Result<TopicsFile, BusError> {
    TopicsFile::parse(&format!(
        "topics:\n  - {{name: t, partitions: 1, retention: 1d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []{fields}}}\n"
    ))
}

#[test]
fn min_isr_is_declared_per_topic_or_by_default_and_never_above_the_replication() {
    let defaults = one_topic("").unwrap();
    assert_eq!(defaults.defaults.replication_factor, 3);
    assert_eq!(defaults.defaults.min_insync_replicas, 2);
    assert!(
        !defaults.topics[0].ordered_by_key,
        "order-free unless declared"
    );
    let own = one_topic_with(", replication_factor: 3, min_insync_replicas: 3").unwrap();
    assert_eq!(
        own.settings(&own.topics[0], 3).min_insync_replicas.applied,
        3
    );
    // A default above a topic's own replication is capped, not refused.
    let single = one_topic_with(", replication_factor: 1").unwrap();
    assert_eq!(
        single.settings(&single.topics[0], 3).min_insync_replicas,
        Capped {
            declared: 2,
            applied: 1
        }
    );
    assert!(one_topic_with(", replication_factor: 2, min_insync_replicas: 3").is_err());
    assert!(one_topic_with(", min_insync_replicas: 0").is_err());
    assert!(one_topic_with(", replication_factor: 0").is_err());
    assert!(one_topic("defaults: {replication_factor: 2, min_insync_replicas: 3}\n").is_err());
    assert!(one_topic("defaults: {min_insync_replicas: 1}\n").is_ok());
    assert!(
        one_topic("defaults: {min_isr: 1}\n").is_err(),
        "unknown field"
    );
    assert!(one_topic_with(", ordered_by_key: yes-please").is_err());
}

fn two_topics() -> TopicsFile {
    TopicsFile::parse(
        "topics:\n  - {name: ordered, partitions: 4, retention: 1d, cleanup_policy: delete, ordered_by_key: true, key: referral id, value: v, producers: [], consumers: []}\n  - {name: free, partitions: 4, retention: 1d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}\n  - {name: missing, partitions: 4, retention: 1d, cleanup_policy: delete, ordered_by_key: true, key: k, value: v, producers: [], consumers: []}\n",
    )
    .unwrap()
}

#[test]
fn an_ordered_topic_is_refused_growth_while_the_rest_is_planned() {
    let file = two_topics();
    let existing = |partitions| ExistingTopic {
        partitions,
        replication: 1,
    };
    let cluster = BTreeMap::from([
        ("ordered".to_owned(), existing(2)),
        ("free".to_owned(), existing(2)),
    ]);
    let planned = plan(&file, &Members::default(), &cluster);
    assert_eq!(
        planned.refused,
        vec![Refusal {
            topic: "ordered".into(),
            key: "referral id".into(),
            partitions: 2,
            declared: 4
        }]
    );
    assert_eq!(planned.to_grow, vec![("free".to_owned(), 2, 4)]);
    let created: Vec<&str> = planned
        .to_create
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(created, vec!["missing"]);
    assert_eq!(
        planned.existing.len(),
        2,
        "both existing topics are checked for drift"
    );

    let as_declared = BTreeMap::from([
        ("ordered".to_owned(), existing(4)),
        ("free".to_owned(), existing(6)),
        ("missing".to_owned(), existing(4)),
    ]);
    let settled = plan(&file, &Members::default(), &as_declared);
    assert!(settled.refused.is_empty() && settled.to_grow.is_empty());
    assert!(settled.to_create.is_empty());
    assert!(
        settled.warnings[0].contains("free has 6 partitions"),
        "{:?}",
        settled.warnings
    );
}

#[test]
fn a_refusal_says_why_and_what_to_do_instead() {
    let refusal = Refusal {
        topic: "referral.events".into(),
        key: "referral id".into(),
        partitions: 12,
        declared: 24,
    }
    .to_string();
    for expected in [
        "referral.events: refused to add partitions (12 -> 24)",
        "rely on the order of messages with the same key (referral id)",
        "send existing keys to other partitions",
        "Keep `partitions: 12` in topics.yaml",
        "create a new topic with 24 partitions and move producers and consumers over to it",
        "replay or mirror",
    ] {
        assert!(
            refusal.contains(expected),
            "{expected:?} missing from {refusal}"
        );
    }
}

fn config(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn drift_names_the_topic_the_setting_and_both_values() {
    let file = two_topics();
    let declared = file.settings(&file.topics[0], 3);
    let as_declared = config(&[
        ("retention.ms", "86400000"),
        ("cleanup.policy", "delete"),
        ("min.insync.replicas", "2"),
        ("segment.ms", "604800000"),
    ]);
    assert_eq!(drift("ordered", &declared, 3, &as_declared), vec![]);

    let drifted = config(&[
        ("retention.ms", "3600000"),
        ("cleanup.policy", "compact,delete"),
    ]);
    let found = drift("ordered", &declared, 2, &drifted);
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines[..3],
        [
            "ordered: retention.ms is 3600000 (1h), declared 86400000 (1d); left as it is: alter it (kafka-configs.sh --alter) or declare the actual value",
            "ordered: cleanup.policy is compact,delete, declared delete; left as it is: alter it (kafka-configs.sh --alter) or declare the actual value",
            "ordered: min.insync.replicas is not set, declared 2; left as it is: alter it (kafka-configs.sh --alter) or declare the actual value",
        ]
    );
    assert_eq!(
        found[3],
        Drift {
            topic: "ordered".into(),
            setting: REPLICATION_FACTOR,
            declared: "3".into(),
            actual: "2".into()
        }
    );
    // On one broker the declared values are capped before comparing.
    let laptop = file.settings(&file.topics[0], 1);
    let on_laptop = config(&[
        ("retention.ms", "86400000"),
        ("cleanup.policy", "delete"),
        ("min.insync.replicas", "1"),
    ]);
    assert_eq!(drift("ordered", &laptop, 1, &on_laptop), vec![]);
    let too_strict = config(&[
        ("retention.ms", "86400000"),
        ("cleanup.policy", "delete"),
        ("min.insync.replicas", "2"),
    ]);
    assert_eq!(
        drift("ordered", &laptop, 1, &too_strict)[0].to_string(),
        "ordered: min.insync.replicas is 2, declared 1 (2 declared, capped to fit the cluster); left as it is: alter it (kafka-configs.sh --alter) or declare the actual value"
    );
}

#[test]
fn the_report_says_nothing_to_change_only_when_all_is_as_declared() {
    let quiet = ApplyReport {
        unchanged: vec!["a".into(), "b".into()],
        ..ApplyReport::default()
    };
    assert_eq!(
        quiet.to_string(),
        "nothing to change: all 2 topics already as declared"
    );
    let noisy = ApplyReport {
        refused: vec![Refusal {
            topic: "a".into(),
            key: "k".into(),
            partitions: 1,
            declared: 2,
        }],
        drift: vec![Drift {
            topic: "b".into(),
            setting: "retention.ms",
            declared: "1".into(),
            actual: "2".into(),
        }],
        ..ApplyReport::default()
    };
    let text = noisy.to_string();
    assert!(
        text.contains("refused    a: refused to add partitions (1 -> 2)"),
        "{text}"
    );
    assert!(
        text.contains("drift      b: retention.ms is 2, declared 1"),
        "{text}"
    );
    assert!(
        text.ends_with("0 created, 0 grown, 0 already as declared, 1 refused, 1 with drift"),
        "{text}"
    );
}
