//! The demo borough read by the real readers that live in services (the demo, like the
//! composition root, is where a library and a service meet).

#[test]
fn the_call_log_export_reads_cleanly_and_links_asc_diversions_to_people() {
    let town = linkwork_borough::borough(7, 400, 500);
    let csv = town.call_log_csv();
    let parsed = linkwork_ingest::call_log::parse(csv.as_bytes()).unwrap();
    assert!(
        parsed.errors.is_empty(),
        "{:?}",
        &parsed.errors[..parsed.errors.len().min(3)]
    );
    let asc = town.referrals.iter().filter(|r| r.source == "asc").count();
    let diverted_people = parsed
        .events
        .iter()
        .filter(|event| matches!(event, linkwork_domain::CallLogEvent::CaseOpened(opened) if opened.case_id.as_str().starts_with("LWC") && !opened.case_id.as_str().ends_with("-R")))
        .filter(|event| matches!(event, linkwork_domain::CallLogEvent::CaseOpened(opened) if opened.person_id.is_some()))
        .count();
    assert_eq!(diverted_people, asc);
    assert!(asc > 20);
    assert!(
        csv.lines()
            .any(|line| line.ends_with("-R") || line.contains("-R,")),
        "some come back"
    );
    assert_eq!(
        csv,
        linkwork_borough::borough(7, 400, 500).call_log_csv(),
        "deterministic"
    );
}
