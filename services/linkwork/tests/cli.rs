//! The `linkwork` binary as users run it, against the local stack.

use std::process::Command;

fn linkwork() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_linkwork"));
    let brokers =
        std::env::var("LINKWORK_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    command
        .env("LINKWORK_KAFKA_BROKERS", brokers)
        .env("RUST_LOG", "warn");
    command
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("linkwork runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "linkwork failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn topics_apply_creates_missing_topics_then_says_nothing_changed() {
    let prefix = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let file = std::env::temp_dir().join(format!("{prefix}.yaml"));
    std::fs::write(
        &file,
        format!(
            "topics:\n  - {{name: {prefix}.events, partitions: 2, retention: forever, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}}\n  - {{name: '{prefix}.provider.{{provider}}.referrals', per: provider, partitions: 1, retention: 90d, cleanup_policy: delete, key: k, value: v, producers: [], consumers: []}}\n"
        ),
    )
    .unwrap();
    let apply = || {
        let mut command = linkwork();
        command
            .args(["topics", "apply", "--file"])
            .arg(&file)
            .args(["--provider", "townley-connectors"]);
        command
    };
    let first = run(&mut apply());
    assert!(
        first.contains(&format!("created    {prefix}.events")),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "created    {prefix}.provider.townley-connectors.referrals"
        )),
        "{first}"
    );
    assert!(first.contains("2 created"), "{first}");
    let second = run(&mut apply());
    assert!(
        second.contains("nothing to change: all 2 topics already as declared"),
        "{second}"
    );
    assert!(!second.contains("created "), "{second}");
}

#[test]
fn a_missing_broker_setting_is_named_in_the_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_linkwork"))
        .args(["topics", "apply"])
        .env_remove("LINKWORK_KAFKA_BROKERS")
        .output()
        .expect("linkwork runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LINKWORK_KAFKA_BROKERS"), "{stderr}");
}
