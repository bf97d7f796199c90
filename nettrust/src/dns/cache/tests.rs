use std::str::FromStr;

use hickory_proto::{
    op::OpCode,
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, CNAME, SOA},
    },
};

use super::*;

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn question(n: &str, t: RecordType) -> Query {
    Query::query(name(n), t)
}

fn response(q: &Query, rcode: ResponseCode, answers: &[(&str, u32)]) -> Message {
    let mut m = Message::response(99, OpCode::Query);
    m.metadata.response_code = rcode;
    m.add_query(q.clone());
    for (ip, ttl) in answers {
        m.add_answer(Record::from_rdata(
            q.name.clone(),
            *ttl,
            RData::A(A(ip.parse().unwrap())),
        ));
    }
    m
}

fn with_soa(mut m: Message, ttl: u32, minimum: u32) -> Message {
    m.add_authority(Record::from_rdata(
        name("test."),
        ttl,
        RData::SOA(SOA::new(
            name("ns.test."),
            name("admin.test."),
            1,
            3600,
            600,
            86400,
            minimum,
        )),
    ));
    m
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn key_folds_case_and_separates_type_and_class() {
    let a = question("WWW.Example.", RecordType::A);
    assert_eq!(
        CacheKey::of(&a),
        CacheKey::of(&question("www.example.", RecordType::A))
    );
    assert_ne!(
        CacheKey::of(&a),
        CacheKey::of(&question("www.example.", RecordType::AAAA))
    );
    let mut chaos = a.clone();
    chaos.query_class = DNSClass::CH;
    assert_ne!(CacheKey::of(&a), CacheKey::of(&chaos));

    let cache = Cache::new(secs(300), 100);
    let now = Instant::now();
    cache.insert(
        &a,
        &response(&a, ResponseCode::NoError, &[("192.0.2.1", 60)]),
        now,
    );
    assert!(
        cache
            .get(&question("www.EXAMPLE.", RecordType::A), 1, now)
            .is_some()
    );
    // The original served any cached type for a name: an MX query must not get the A answer.
    assert!(
        cache
            .get(&question("www.example.", RecordType::MX), 1, now)
            .is_none()
    );
    assert!(cache.get(&chaos, 1, now).is_none());
}

#[test]
fn hit_carries_the_clients_id_and_leaves_the_stored_copy_alone() {
    let q = question("id.test.", RecordType::A);
    let cache = Cache::new(secs(300), 100);
    let now = Instant::now();
    cache.insert(
        &q,
        &response(&q, ResponseCode::NoError, &[("192.0.2.1", 60)]),
        now,
    );
    assert_eq!(cache.get(&q, 1234, now).unwrap().metadata.id, 1234);
    assert_eq!(cache.get(&q, 4321, now).unwrap().metadata.id, 4321);
}

#[test]
fn ttls_decrease_with_age_and_entries_expire() {
    let q = question("decay.test.", RecordType::A);
    let cache = Cache::new(secs(300), 100);
    let t0 = Instant::now();
    cache.insert(
        &q,
        &response(
            &q,
            ResponseCode::NoError,
            &[("192.0.2.1", 60), ("192.0.2.2", 100)],
        ),
        t0,
    );
    let ttls = |m: Message| m.answers.iter().map(|r| r.ttl).collect::<Vec<_>>();
    assert_eq!(ttls(cache.get(&q, 1, t0).unwrap()), [60, 60]);
    assert_eq!(ttls(cache.get(&q, 1, t0 + secs(25)).unwrap()), [35, 35]);
    assert_eq!(ttls(cache.get(&q, 1, t0 + secs(59)).unwrap()), [1, 1]);
    assert!(
        cache.get(&q, 1, t0 + secs(60)).is_none(),
        "the smallest TTL bounds the entry"
    );
    assert!(cache.is_empty(), "an expired entry is removed when found");
}

#[test]
fn ttls_are_capped_by_the_setting() {
    let q = question("cap.test.", RecordType::A);
    let cache = Cache::new(secs(10), 100);
    let t0 = Instant::now();
    cache.insert(
        &q,
        &response(&q, ResponseCode::NoError, &[("192.0.2.1", 3600)]),
        t0,
    );
    assert_eq!(cache.get(&q, 1, t0).unwrap().answers[0].ttl, 10);
    assert_eq!(cache.get(&q, 1, t0 + secs(4)).unwrap().answers[0].ttl, 6);
    assert!(cache.get(&q, 1, t0 + secs(10)).is_none());
}

#[test]
fn negative_answers_live_as_long_as_the_soa_says() {
    let cache = Cache::new(secs(300), 100);
    let t0 = Instant::now();
    // NXDOMAIN: min(SOA TTL 120, MINIMUM 30) = 30 s (RFC 2308 §5).
    let nx = question("nx.test.", RecordType::A);
    cache.insert(
        &nx,
        &with_soa(response(&nx, ResponseCode::NXDomain, &[]), 120, 30),
        t0,
    );
    let hit = cache.get(&nx, 7, t0 + secs(29)).unwrap();
    assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        hit.metadata.message_type,
        hickory_proto::op::MessageType::Response
    );
    assert_eq!(hit.authorities[0].ttl, 1);
    assert!(cache.get(&nx, 7, t0 + secs(30)).is_none());
    // NODATA (NOERROR, no answer): the SOA TTL when smaller than MINIMUM.
    let nodata = question("nodata.test.", RecordType::AAAA);
    cache.insert(
        &nodata,
        &with_soa(response(&nodata, ResponseCode::NoError, &[]), 5, 900),
        t0,
    );
    assert!(cache.get(&nodata, 7, t0 + secs(4)).is_some());
    assert!(cache.get(&nodata, 7, t0 + secs(5)).is_none());
}

#[test]
fn uncacheable_answers_are_not_stored() {
    let cache = Cache::new(secs(300), 100);
    let now = Instant::now();
    let q = question("x.test.", RecordType::A);
    // Negative without SOA (RFC 2308 §5: must not be cached).
    cache.insert(&q, &response(&q, ResponseCode::NXDomain, &[]), now);
    // Server failure.
    cache.insert(
        &q,
        &response(&q, ResponseCode::ServFail, &[("192.0.2.1", 60)]),
        now,
    );
    // TTL 0.
    cache.insert(
        &q,
        &response(&q, ResponseCode::NoError, &[("192.0.2.1", 0)]),
        now,
    );
    // Truncated.
    let mut tc = response(&q, ResponseCode::NoError, &[("192.0.2.1", 60)]);
    tc.metadata.truncation = true;
    cache.insert(&q, &tc, now);
    assert!(cache.is_empty());
}

#[test]
fn cname_chain_ttl_is_the_smallest_record() {
    let q = question("alias.test.", RecordType::A);
    let mut m = response(&q, ResponseCode::NoError, &[]);
    m.add_answer(Record::from_rdata(
        name("alias.test."),
        20,
        RData::CNAME(CNAME(name("c.test."))),
    ));
    m.add_answer(Record::from_rdata(
        name("c.test."),
        300,
        RData::A(A("192.0.2.12".parse().unwrap())),
    ));
    assert_eq!(cacheable_ttl(&m), Some(20));
}

#[test]
fn size_is_bounded_least_recently_used_first() {
    let cache = Cache::new(secs(300), 16);
    let t0 = Instant::now();
    let q = |i: usize| question(&format!("n{i}.test."), RecordType::A);
    for i in 0..16 {
        cache.insert(
            &q(i),
            &response(&q(i), ResponseCode::NoError, &[("192.0.2.1", 60)]),
            t0,
        );
    }
    // n0 is used recently; n1 is the least recently used.
    assert!(cache.get(&q(0), 1, t0).is_some());
    for i in 16..40 {
        cache.insert(
            &q(i),
            &response(&q(i), ResponseCode::NoError, &[("192.0.2.1", 60)]),
            t0,
        );
        assert!(cache.len() <= 16, "{} entries", cache.len());
    }
    assert!(cache.get(&q(1), 1, t0).is_none());
    assert!(cache.get(&q(39), 1, t0).is_some());
}
