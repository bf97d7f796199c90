mod end_to_end {
    use std::{
        net::IpAddr,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use hickory_proto::{
        op::{Message, ResponseCode},
        rr::{RData, Record, RecordType, rdata::PTR},
    };

    use crate::{
        authorizer::Authorizer,
        blacklist::{Blacklist, BlockResponse},
        dns::{
            cache::Cache,
            proxy::{ClientTransport, MAX_UDP_REPLY, Proxy},
            testutil::*,
            upstream::{Transport, Upstreams},
        },
    };

    struct Setup {
        proxy: Proxy,
        firewall: Arc<Recording>,
        upstream: Served,
    }

    async fn setup(script: Script, blacklist: Blacklist, cache: bool, ptr: bool) -> Setup {
        // The proxy reaches the upstream over TCP (the UDP exchange is the UDP engine's), with
        // the UDP transport's settings (EDNS0 payload size rewritten for UDP clients).
        let upstream = tcp_server(0, script, None).await;
        let firewall = Arc::new(Recording::default());
        let authorizer = Authorizer::new(firewall.clone(), None)
            .with_blacklist(Arc::new(blacklist))
            .with_ptr_authorization(ptr);
        let proxy = Proxy::new(
            Upstreams::new(&[upstream.addr], Transport::Udp, Duration::from_millis(150)),
            authorizer,
        )
        .with_cache(cache.then(|| Cache::new(Duration::from_secs(300), 100)));
        Setup {
            proxy,
            firewall,
            upstream,
        }
    }

    async fn ask(s: &Setup, qname: &str, qtype: RecordType) -> Message {
        let bytes = s
            .proxy
            .handle(&query_bytes(qname, qtype, 0x4242), ClientTransport::Udp)
            .await
            .expect("a reply");
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.id, 0x4242, "the client's ID comes back");
        m
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Each forged or unusable upstream reply, sent as the only reply: nothing is authorized.
    #[tokio::test]
    async fn validation_matrix_authorizes_nothing() {
        let ok = |q: &Message| reply(q, &[a("v.test.", "192.0.2.66")]);
        let matrix = forged_replies();
        // Sanity: the well-formed reply does authorize (so the matrix can fail).
        let s = setup(
            Arc::new(move |q: &Message| vec![ok(q)]),
            Blacklist::default(),
            false,
            false,
        )
        .await;
        ask(&s, "v.test.", RecordType::A).await;
        assert_eq!(s.firewall.calls(), ips(&["192.0.2.66"]));
        for (case, forge) in matrix {
            let s = setup(
                Arc::new(move |q: &Message| vec![forge(q)]),
                Blacklist::default(),
                false,
                false,
            )
            .await;
            let m = ask(&s, "v.test.", RecordType::A).await;
            assert!(
                s.firewall.calls().is_empty(),
                "{case}: authorized {:?}",
                s.firewall.calls()
            );
            assert!(
                m.answers.iter().all(|r| !matches!(r.data, RData::A(_)))
                    || m.metadata.truncation
                    || case == "unrelated records only"
                    || case == "CNAME chain rooted elsewhere",
                "{case}: an address reached the client: {m:?}"
            );
        }
    }

    #[tokio::test]
    async fn every_cache_hit_reauthorizes() {
        let s = setup(answer_with("192.0.2.7"), Blacklist::default(), true, false).await;
        for _ in 0..3 {
            let m = ask(&s, "cached.test.", RecordType::A).await;
            assert_eq!(m.answers.len(), 1);
        }
        assert_eq!(
            s.upstream.queries(),
            1,
            "answers 2 and 3 come from the cache"
        );
        assert_eq!(
            s.firewall.calls(),
            ips(&["192.0.2.7", "192.0.2.7", "192.0.2.7"])
        );
        // Case-folded key: another spelling is a hit too.
        ask(&s, "CACHED.test.", RecordType::A).await;
        assert_eq!(s.upstream.queries(), 1);
        assert_eq!(s.firewall.calls().len(), 4);
    }

    #[tokio::test]
    async fn blacklisted_question_never_reaches_the_upstream() {
        let domains = vec!["*.ads.test".to_string(), "bad.test".to_string()];
        let bl = Blacklist::new(&domains, &[], &[], BlockResponse::Refused).unwrap();
        let s = setup(answer_with("192.0.2.8"), bl, false, false).await;
        for qname in ["x.ads.test.", "X.Y.ADS.test.", "bad.test."] {
            let m = ask(&s, qname, RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qname}");
            assert!(m.answers.is_empty());
        }
        assert_eq!(s.upstream.queries(), 0);
        let m = ask(&s, "ads.test.", RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "the wildcard's parent is allowed"
        );
        assert_eq!(s.firewall.calls(), ips(&["192.0.2.8"]));
    }

    #[tokio::test]
    async fn blacklisted_cname_target_blocks_the_answer() {
        let bl = Blacklist::new(
            &["*.tracker.test".into()],
            &[],
            &[],
            BlockResponse::NxDomain,
        )
        .unwrap();
        let script: Script = Arc::new(|q: &Message| {
            let mut m = reply(q, &[]);
            m.add_answer(cname("innocent.test.", "edge.Tracker.test."));
            m.add_answer(a("edge.tracker.test.", "192.0.2.9"));
            vec![m]
        });
        let s = setup(script, bl, true, false).await;
        for _ in 0..2 {
            let m = ask(&s, "innocent.test.", RecordType::A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
            assert!(m.answers.is_empty());
        }
        assert!(s.firewall.calls().is_empty());
    }

    #[tokio::test]
    async fn blacklisted_hosts_stay_in_the_answer_unauthorized() {
        let bl = Blacklist::new(
            &[],
            &ips(&["192.0.2.10"]),
            &["2001:db8:bad::/48".parse().unwrap()],
            BlockResponse::Refused,
        )
        .unwrap();
        let script: Script = Arc::new(|q: &Message| {
            vec![reply(
                q,
                &[a("h.test.", "192.0.2.10"), a("h.test.", "192.0.2.11")],
            )]
        });
        let s = setup(script, bl, false, false).await;
        let m = ask(&s, "h.test.", RecordType::A).await;
        assert_eq!(
            m.answers.len(),
            2,
            "the blacklisted address stays in the answer"
        );
        assert_eq!(s.firewall.calls(), ips(&["192.0.2.11"]));
    }

    fn ptr_script() -> Script {
        Arc::new(|q: &Message| {
            let owner = q.queries[0].name.clone();
            vec![reply(
                q,
                &[Record::from_rdata(
                    owner,
                    60,
                    RData::PTR(PTR(name("host.test."))),
                )],
            )]
        })
    }

    #[tokio::test]
    async fn ptr_answers_authorize_only_when_opted_in() {
        let off = setup(ptr_script(), Blacklist::default(), false, false).await;
        ask(&off, "10.2.0.192.in-addr.arpa.", RecordType::PTR).await;
        assert!(off.firewall.calls().is_empty());
        let on = setup(ptr_script(), Blacklist::default(), false, true).await;
        ask(&on, "10.2.0.192.in-addr.arpa.", RecordType::PTR).await;
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.";
        ask(&on, v6, RecordType::PTR).await;
        assert_eq!(on.firewall.calls(), ips(&["192.0.2.10", "2001:db8:1::1"]));
    }

    #[tokio::test]
    async fn edns_payload_size_sent_upstream_is_ours() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let script: Script = Arc::new(move |q: &Message| {
            record
                .lock()
                .unwrap()
                .push(q.edns.as_ref().map(hickory_proto::op::Edns::max_payload));
            vec![reply(q, &[a("e.test.", "192.0.2.13")])]
        });
        let s = setup(script, Blacklist::default(), false, false).await;
        for client_size in [Some(4096), Some(512), None] {
            let mut m = Message::query();
            m.metadata.id = 77;
            m.add_query(hickory_proto::op::Query::query(
                name("e.test."),
                RecordType::A,
            ));
            if let Some(size) = client_size {
                let mut edns = hickory_proto::op::Edns::new();
                edns.set_max_payload(size);
                m.set_edns(edns);
            }
            let reply = s
                .proxy
                .handle(&m.to_vec().unwrap(), ClientTransport::Udp)
                .await
                .unwrap();
            assert_eq!(Message::from_vec(&reply).unwrap().metadata.id, 77);
        }
        // EDNS clients are forwarded with 1232 (the default fwd_udp_buffer_size); a client
        // without EDNS is forwarded as it is (its answers stay within 512 bytes).
        assert_eq!(*seen.lock().unwrap(), [Some(1232), Some(1232), None]);
    }

    #[tokio::test]
    async fn upstream_failure_is_servfail() {
        let s = setup(
            Arc::new(|_: &Message| Vec::new()),
            Blacklist::default(),
            false,
            false,
        )
        .await;
        let m = ask(&s, "slow.test.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn answers_too_big_for_the_client_are_truncated_unauthorized() {
        let script: Script = Arc::new(|q: &Message| {
            let records: Vec<_> = (1..=60)
                .map(|i| a("big.test.", &format!("192.0.2.{i}")))
                .collect();
            vec![reply(q, &records)]
        });
        let s = setup(script, Blacklist::default(), false, false).await;
        let m = ask(&s, "big.test.", RecordType::A).await;
        assert!(m.metadata.truncation, "60 A records exceed 512 bytes");
        assert!(m.answers.is_empty());
        assert!(
            s.firewall.calls().is_empty(),
            "the client retries over TCP; that answer authorizes"
        );
    }

    fn edns_query(qname: &str, id: u16, size: u16) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(hickory_proto::op::Query::query(name(qname), RecordType::A));
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(size);
        m.set_edns(edns);
        m.to_vec().unwrap()
    }

    /// 60 A records: about 1 KB of answers, 2 KB with 120.
    fn many_records(count: u8) -> Script {
        Arc::new(move |q: &Message| {
            let owner = q.queries[0].name.to_string();
            let records: Vec<_> = (1..=count)
                .map(|i| a(&owner, &format!("192.0.2.{i}")))
                .collect();
            vec![reply(q, &records)]
        })
    }

    /// A client advertising 65,535 bytes gets at most 1232 over UDP, relayed or from the cache;
    /// TCP clients get the whole answer.
    #[tokio::test]
    async fn udp_answers_are_capped_at_1232_bytes_whatever_the_client_advertises() {
        // Relayed: the upstream's UDP answer is 2 KB.
        let s = setup(many_records(120), Blacklist::default(), false, false).await;
        let big = s
            .proxy
            .handle(&edns_query("big.test.", 5, 65_535), ClientTransport::Udp)
            .await
            .unwrap();
        let m = Message::from_vec(&big).unwrap();
        assert!(big.len() <= MAX_UDP_REPLY, "{} bytes", big.len());
        assert!(m.metadata.truncation && m.answers.is_empty());
        assert!(
            s.firewall.calls().is_empty(),
            "a truncated reply authorizes nothing"
        );
        // An answer within 1232 bytes still goes whole to a client that takes it.
        let s = setup(many_records(40), Blacklist::default(), false, false).await;
        let fits = s
            .proxy
            .handle(&edns_query("mid.test.", 8, 65_535), ClientTransport::Udp)
            .await
            .unwrap();
        assert!(
            fits.len() > 512 && fits.len() <= MAX_UDP_REPLY,
            "{}",
            fits.len()
        );
        assert_eq!(Message::from_vec(&fits).unwrap().answers.len(), 40);
        // From the cache: a TCP client's whole answer is cached, a UDP client gets TC=1.
        let upstream = tcp_server(0, many_records(120), None).await;
        let firewall = Arc::new(Recording::default());
        let proxy = Proxy::new(
            Upstreams::new(&[upstream.addr], Transport::Tcp, Duration::from_secs(2)),
            Authorizer::new(firewall.clone(), None),
        )
        .with_cache(Some(Cache::new(Duration::from_secs(300), 100)));
        let whole = proxy
            .handle(&edns_query("big.test.", 6, 65_535), ClientTransport::Tcp)
            .await
            .unwrap();
        assert!(whole.len() > MAX_UDP_REPLY, "{} bytes", whole.len());
        assert_eq!(Message::from_vec(&whole).unwrap().answers.len(), 120);
        let cached = proxy
            .handle(&edns_query("big.test.", 7, 65_535), ClientTransport::Udp)
            .await
            .unwrap();
        assert!(Message::from_vec(&cached).unwrap().metadata.truncation);
        assert!(cached.len() <= MAX_UDP_REPLY);
        assert_eq!(
            upstream.queries(),
            1,
            "the second answer came from the cache"
        );
    }

    /// A query with hundreds of questions gets its error (REFUSED for a client outside
    /// allow_clients, FORMERR for one inside, NOTIMP for another opcode) within the UDP cap,
    /// not a copy of every question: a spoofed query must not reflect more than 1232 bytes.
    #[tokio::test]
    async fn error_replies_to_many_questions_stay_within_the_udp_cap() {
        let s = setup(
            answer_with("192.0.2.31"),
            Blacklist::default(),
            false,
            false,
        )
        .await;
        let proxy = s
            .proxy
            .with_allow_clients(vec!["198.51.100.0/24".parse().unwrap()]);
        let mut m = Message::query();
        m.metadata.id = 77;
        for i in 0..200 {
            m.add_query(hickory_proto::op::Query::query(
                name(&format!("q{i}.many.test.")),
                RecordType::A,
            ));
        }
        let mut notimp = m.clone();
        notimp.metadata.op_code = hickory_proto::op::OpCode::Status;
        let (query, notimp) = (m.to_vec().unwrap(), notimp.to_vec().unwrap());
        assert!(query.len() > MAX_UDP_REPLY, "{} bytes", query.len());
        for (bytes, client, rcode) in [
            (&query, "203.0.113.9", ResponseCode::Refused),
            (&query, "198.51.100.7", ResponseCode::FormErr),
            (&notimp, "198.51.100.7", ResponseCode::NotImp),
        ] {
            let reply = proxy
                .handle_from(
                    bytes,
                    ClientTransport::Udp,
                    at(client.parse::<IpAddr>().unwrap()),
                )
                .await
                .unwrap();
            assert!(reply.len() <= 512, "{rcode}: {} bytes", reply.len());
            let reply = Message::from_vec(&reply).unwrap();
            assert_eq!(
                (reply.metadata.id, reply.metadata.response_code),
                (77, rcode)
            );
        }
        assert!(s.firewall.calls().is_empty());
    }

    /// An upstream answer that is itself truncated (TC=1 even over TCP) is relayed as it is, but
    /// never longer than a UDP client takes.
    #[tokio::test]
    async fn a_truncated_upstream_answer_is_capped_for_udp_clients_too() {
        let records = many_records(120);
        let upstream = tcp_server(
            0,
            Arc::new(move |q: &Message| {
                let mut answers = records(q);
                answers[0].metadata.truncation = true;
                answers
            }),
            None,
        )
        .await;
        let firewall = Arc::new(Recording::default());
        let proxy = Proxy::new(
            Upstreams::new(&[upstream.addr], Transport::Tcp, Duration::from_secs(2)),
            Authorizer::new(firewall.clone(), None),
        );
        let reply = proxy
            .handle(&edns_query("big.test.", 9, 65_535), ClientTransport::Udp)
            .await
            .unwrap();
        assert!(reply.len() <= MAX_UDP_REPLY, "{} bytes", reply.len());
        let m = Message::from_vec(&reply).unwrap();
        assert!(m.metadata.truncation && m.answers.is_empty());
        assert!(
            firewall.calls().is_empty(),
            "a truncated answer authorizes nothing"
        );
        // Over TCP the truncated answer is relayed whole.
        let whole = proxy
            .handle(&edns_query("big.test.", 10, 65_535), ClientTransport::Tcp)
            .await
            .unwrap();
        assert_eq!(Message::from_vec(&whole).unwrap().answers.len(), 120);
        assert!(firewall.calls().is_empty());
    }

    /// A client outside allow_clients gets REFUSED: nothing forwarded, nothing authorized, not
    /// even from the cache; it is counted. A client inside is served.
    #[tokio::test]
    async fn clients_outside_allow_clients_are_refused_and_authorize_nothing() {
        let s = setup(answer_with("192.0.2.31"), Blacklist::default(), true, false).await;
        let proxy = s.proxy.with_allow_clients(vec![
            "127.0.0.0/8".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ]);
        let inside: IpAddr = "198.51.100.7".parse().unwrap();
        let outside: IpAddr = "203.0.113.9".parse().unwrap();
        let mapped_outside: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        for transport in [
            ClientTransport::Udp,
            ClientTransport::Tcp,
            ClientTransport::Tls,
        ] {
            for client in [outside, mapped_outside] {
                let reply = proxy
                    .handle_from(
                        &query_bytes("r.test.", RecordType::A, 9),
                        transport,
                        at(client),
                    )
                    .await
                    .expect("a REFUSED reply");
                let m = Message::from_vec(&reply).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::Refused);
                assert_eq!(m.metadata.id, 9);
                assert!(m.answers.is_empty());
            }
        }
        assert_eq!(s.upstream.queries(), 0, "nothing forwarded");
        assert!(s.firewall.calls().is_empty(), "nothing authorized");
        assert_eq!(proxy.refused_clients(), 6);
        // Unparsable bytes from outside get nothing at all.
        assert!(
            proxy
                .handle_from(
                    &[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
                    ClientTransport::Udp,
                    at(outside)
                )
                .await
                .is_none()
        );
        // Inside: served (and cached).
        let reply = proxy
            .handle_from(
                &query_bytes("r.test.", RecordType::A, 10),
                ClientTransport::Udp,
                at(inside),
            )
            .await
            .unwrap();
        assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 1);
        assert_eq!(s.firewall.calls(), ips(&["192.0.2.31"]));
        // A cache hit would re-authorize: refused from outside all the same.
        let reply = proxy
            .handle_from(
                &query_bytes("r.test.", RecordType::A, 11),
                ClientTransport::Udp,
                at(outside),
            )
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        assert_eq!(
            s.firewall.calls(),
            ips(&["192.0.2.31"]),
            "the hit authorized nothing"
        );
    }

    /// An IPv6 client is one /64 (a host picks any address in its prefix at will): rotating
    /// source addresses does not raise its in-flight bound; another /64 is still forwarded.
    #[tokio::test]
    async fn an_ipv6_client_rotating_addresses_in_its_64_shares_one_bound() {
        let s = setup(
            Arc::new(|_: &Message| Vec::new()),
            Blacklist::default(),
            false,
            false,
        )
        .await;
        let proxy = Arc::new(
            s.proxy
                .with_allow_clients(vec!["2001:db8::/32".parse().unwrap()])
                .with_client_in_flight_limit(4),
        );
        let slow: Vec<_> = (1..=4u16)
            .map(|i| {
                let proxy = proxy.clone();
                let client: IpAddr = format!("2001:db8:0:1::{i:x}").parse().unwrap();
                tokio::spawn(async move {
                    proxy
                        .handle_from(
                            &query_bytes(&format!("r{i}.slow.test."), RecordType::A, i),
                            ClientTransport::Udp,
                            at(client),
                        )
                        .await
                })
            })
            .collect();
        let first: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        // Wait until the four are forwarded.
        for _ in 0..100 {
            if s.upstream.queries() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(s.upstream.queries(), 4);
        // A fifth address of the same /64 is refused at once.
        let started = tokio::time::Instant::now();
        let reply = proxy
            .handle_from(
                &query_bytes("r5.slow.test.", RecordType::A, 5),
                ClientTransport::Udp,
                at("2001:db8:0:1:ffff::5".parse::<IpAddr>().unwrap()),
            )
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        // Another /64 is forwarded (SERVFAIL after the silent upstream's timeout).
        let other_reply = proxy
            .handle_from(
                &query_bytes("o.slow.test.", RecordType::A, 6),
                ClientTransport::Udp,
                at("2001:db8:0:2::1".parse::<IpAddr>().unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&other_reply)
                .unwrap()
                .metadata
                .response_code,
            ResponseCode::ServFail
        );
        for task in slow {
            task.await.unwrap();
        }
        assert_eq!(
            proxy.client_slots().in_flight(first),
            0,
            "the slots came back"
        );
    }

    /// Over its in-flight bound a client is refused at once (not after the upstream's timeout);
    /// another client is still forwarded, and the slots come back when the queries end.
    #[tokio::test]
    async fn a_client_over_its_in_flight_bound_is_refused_at_once() {
        let s = setup(
            Arc::new(|_: &Message| Vec::new()),
            Blacklist::default(),
            false,
            false,
        )
        .await;
        let proxy = Arc::new(s.proxy.with_client_in_flight_limit(4));
        let flooder: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        let slow: Vec<_> = (0..4)
            .map(|i| {
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    proxy
                        .handle_from(
                            &query_bytes(&format!("s{i}.slow.test."), RecordType::A, i),
                            ClientTransport::Udp,
                            at(flooder),
                        )
                        .await
                })
            })
            .collect();
        // Wait until the four are forwarded.
        for _ in 0..100 {
            if proxy.client_slots().in_flight(flooder) == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(proxy.client_slots().in_flight(flooder), 4);
        let started = tokio::time::Instant::now();
        let reply = proxy
            .handle_from(
                &query_bytes("s5.slow.test.", RecordType::A, 5),
                ClientTransport::Udp,
                at(flooder),
            )
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        // Another client is forwarded (it waits for the silent upstream: SERVFAIL after 150 ms).
        let other_reply = proxy
            .handle_from(
                &query_bytes("o.slow.test.", RecordType::A, 6),
                ClientTransport::Udp,
                at(other),
            )
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&other_reply)
                .unwrap()
                .metadata
                .response_code,
            ResponseCode::ServFail
        );
        for task in slow {
            task.await.unwrap();
        }
        assert_eq!(
            proxy.client_slots().in_flight(flooder),
            0,
            "the slots came back"
        );
        assert_eq!(proxy.client_slots().in_flight(other), 0);
    }

    /// A client socket address of `ip` (the port is irrelevant to these tests).
    fn at(ip: IpAddr) -> std::net::SocketAddr {
        std::net::SocketAddr::new(ip, 5353)
    }
}
