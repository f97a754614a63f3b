use std::path::{Path, PathBuf};

use super::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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
    let template = file
        .topics
        .iter()
        .find(|topic| topic.per == Some(TopicTemplate::Provider));
    assert_eq!(
        template.map(|topic| topic.name.as_str()),
        Some(PROVIDER_QUEUE_TEMPLATE)
    );
}

#[test]
fn every_consumer_has_a_declared_dead_letter_topic() {
    let file = declared();
    for consumer in consumers::ALL {
        let dead_letters = dlq(consumer);
        assert!(
            file.topics.iter().any(|topic| topic.name == dead_letters),
            "{dead_letters} is not declared"
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
fn templates_expand_once_per_provider() {
    let file = declared();
    let providers = [
        ProviderId::parse("townley-connectors").unwrap(),
        ProviderId::parse("wellbeing-hub").unwrap(),
    ];
    let names: Vec<String> = file
        .expand(&providers)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
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
    assert!(
        case("good.topic", ", colour: blue").is_err(),
        "unknown field"
    );
}
