use hickory_proto::{op::Query, rr::RecordType};

use super::*;
use crate::dns::testutil::name;

fn question(n: &str) -> Query {
    Query::query(name(n), RecordType::A)
}

#[test]
fn back_off_needs_distinct_questions_in_the_window_with_no_answer_between() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut h = Health::default();
    // The same question, any number of times.
    for i in 0..10 {
        assert!(!h.failed(1, at(i), at(i)));
    }
    assert!(h.healthy_at(at(10)));
    // Two more distinct questions: three in all.
    assert!(!h.failed(2, at(11), at(11)));
    assert!(h.failed(3, at(12), at(12)));
    assert!(!h.healthy_at(at(13)));
    assert!(h.healthy_at(at(12) + HEALTH_BACKOFF));
    // On probation after the back-off: one failure is enough.
    assert!(h.failed(4, at(12) + HEALTH_BACKOFF, at(12) + HEALTH_BACKOFF));
    // An answer clears everything.
    h.succeeded(at(13));
    assert!(h.healthy_at(at(13)));
    assert!(!h.failed(1, at(20), at(20)));
    assert!(!h.failed(2, at(21), at(21)));
    h.succeeded(at(21));
    assert!(
        !h.failed(3, at(22), at(22)),
        "the answer in between reset the count"
    );
    // Failures older than the window do not count.
    let mut h = Health::default();
    assert!(!h.failed(1, at(0), at(0)));
    assert!(!h.failed(2, at(1), at(1)));
    assert!(!h.failed(3, at(2) + FAILURE_WINDOW, at(2) + FAILURE_WINDOW));
    assert!(h.healthy_at(at(3) + FAILURE_WINDOW));
    // Queries sent before the server's last answer do not count, however many fail after it.
    let mut h = Health::default();
    h.succeeded(at(5));
    for q in 1..10 {
        assert!(!h.failed(q, at(4), at(300 + q)));
    }
    assert!(h.healthy_at(at(400)));
}

#[test]
fn question_keys_ignore_case_but_not_type() {
    let upper = question("X.Slow.Test.");
    assert_eq!(
        question_key(&upper),
        question_key(&question("x.slow.test."))
    );
    let aaaa = Query::query(name("x.slow.test."), RecordType::AAAA);
    assert_ne!(question_key(&aaaa), question_key(&question("x.slow.test.")));
}
