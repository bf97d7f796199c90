use super::*;

#[test]
fn garbage_with_a_header_gets_formerr() {
    let mut query = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    query.extend_from_slice(&[0xff; 5]);
    let response = Message::from_vec(&unparsable_query_response(&query).unwrap()).unwrap();
    assert_eq!(response.metadata.id, 0xabcd);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(response.metadata.message_type, MessageType::Response);
}

#[test]
fn short_garbage_and_responses_get_nothing() {
    assert!(unparsable_query_response(&[1, 2, 3]).is_none());
    let response_header = [0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
    assert!(unparsable_query_response(&response_header).is_none());
}

#[test]
fn error_response_keeps_id_and_question() {
    use std::str::FromStr;
    let mut request = Message::query();
    request.metadata.id = 4242;
    request.metadata.recursion_desired = true;
    request.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_str("x.example.").unwrap(),
        hickory_proto::rr::RecordType::AAAA,
    ));
    let response =
        Message::from_vec(&error_response(&request, ResponseCode::ServFail).unwrap()).unwrap();
    assert_eq!(response.metadata.id, 4242);
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(response.queries, request.queries);
    assert!(response.metadata.recursion_desired);
}

/// The core alone: bytes in, steps and outcomes out, no socket anywhere.
mod without_io {
    use std::{
        net::{IpAddr, SocketAddr},
        sync::Arc,
    };

    use hickory_proto::{
        op::{Message, ResponseCode},
        rr::RecordType,
    };

    use super::super::{Answered, ClientTransport, Handler, Outcome, Rejection, Step};
    use crate::{
        authorizer::Authorizer,
        blacklist::{Blacklist, BlockResponse},
        dns::testutil::*,
    };

    const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5353);

    fn handler(blacklist: Blacklist) -> (Handler, Arc<Recording>) {
        let firewall = Arc::new(Recording::default());
        let authorizer =
            Authorizer::new(firewall.clone(), None).with_blacklist(Arc::new(blacklist));
        (Handler::new(authorizer, true), firewall)
    }

    fn forward(handler: &Handler, qname: &str) -> super::super::Forward {
        match handler.step(
            &query_bytes(qname, RecordType::A, 0x4242),
            ClientTransport::Udp,
            LOOPBACK,
        ) {
            Step::Forward(forward) => forward,
            Step::Reply(reply) => panic!("forwarded, not {reply:?}"),
        }
    }

    fn reply_of(step: Step) -> (Option<Message>, Outcome) {
        match step {
            Step::Reply(reply) => (
                reply.bytes.map(|b| Message::from_vec(&b).unwrap()),
                reply.outcome,
            ),
            Step::Forward(_) => panic!("answered at once, not forwarded"),
        }
    }

    #[test]
    fn a_query_of_a_served_client_is_forwarded_as_it_came() {
        let (handler, _) = handler(Blacklist::default());
        let mut forward = forward(&handler, "f.test.");
        assert_eq!(forward.question().name, name("f.test."));
        let sent = forward.query_with_id(7).to_vec();
        assert_eq!(&sent[..2], &7u16.to_be_bytes());
        assert_eq!(
            &sent[2..],
            &query_bytes("f.test.", RecordType::A, 0x4242)[2..]
        );
    }

    #[test]
    fn refusals_and_errors_are_answered_at_once() {
        let blacklist =
            Blacklist::new(&["bad.test".into()], &[], &[], BlockResponse::Refused).unwrap();
        let (mut handler, _) = handler(blacklist);
        handler.set_allow_clients(vec!["127.0.0.0/8".parse().unwrap()]);
        let query = query_bytes("ok.test.", RecordType::A, 1);
        let outside: SocketAddr = "192.0.2.9:5353".parse().unwrap();
        let (refused, outcome) = reply_of(handler.step(&query, ClientTransport::Udp, outside));
        assert_eq!(outcome, Outcome::RefusedClient);
        assert_eq!(
            refused.unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        assert_eq!(handler.refused_clients(), 1);

        let blocked = query_bytes("bad.test.", RecordType::A, 2);
        let (_, outcome) = reply_of(handler.step(&blocked, ClientTransport::Udp, LOOPBACK));
        assert_eq!(outcome, Outcome::Blacklisted);

        let mut response = Message::from_vec(&query).unwrap();
        response.metadata.message_type = hickory_proto::op::MessageType::Response;
        let step = handler.step(&response.to_vec().unwrap(), ClientTransport::Udp, LOOPBACK);
        assert!(matches!(reply_of(step), (None, Outcome::Dropped)));

        let step = handler.step(
            &[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff],
            ClientTransport::Tcp,
            LOOPBACK,
        );
        let (formerr, outcome) = reply_of(step);
        assert_eq!(outcome, Outcome::FormErr);
        assert_eq!(formerr.unwrap().metadata.id, 0xabcd);
    }

    #[test]
    fn only_the_matching_answer_settles_the_query() {
        let (handler, firewall) = handler(Blacklist::default());
        let forward = forward(&handler, "v.test.");
        let query = Message::from_vec(forward.query()).unwrap();
        let mut sent = query.clone();
        sent.metadata.id = 99;
        assert!(matches!(
            handler.answer(&forward, 99, &[1, 2, 3], true),
            Answered::Rejected(Rejection::Malformed)
        ));
        for (what, forge) in forged_replies() {
            let forged = forge(&sent).to_vec().unwrap();
            match handler.answer(&forward, 99, &forged, true) {
                Answered::Rejected(Rejection::Mismatch(_)) => {}
                Answered::RetryOverTcp => assert_eq!(what, "truncated answer"),
                Answered::Reply(reply) => {
                    // Accepted as the answer, but nothing outside the question's chain counts.
                    assert_eq!(reply.outcome, Outcome::Answered, "{what}");
                }
                other @ Answered::Rejected(_) => panic!("{what}: {other:?}"),
            }
        }
        assert!(
            !firewall.calls().contains(&"192.0.2.66".parse().unwrap()),
            "a forged reply authorized its address"
        );
        let good = reply(&sent, &[a("v.test.", "192.0.2.1")]).to_vec().unwrap();
        let Answered::Reply(reply) = handler.answer(&forward, 99, &good, true) else {
            panic!("the answer is accepted");
        };
        assert_eq!(reply.outcome, Outcome::Answered);
        let relayed = Message::from_vec(&reply.bytes.unwrap()).unwrap();
        assert_eq!(relayed.metadata.id, 0x4242, "the client's ID comes back");
        assert_eq!(
            firewall.calls(),
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn a_truncated_answer_over_tcp_is_relayed_authorizing_nothing() {
        let (handler, firewall) = handler(Blacklist::default());
        let forward = forward(&handler, "v.test.");
        let mut sent = Message::from_vec(forward.query()).unwrap();
        sent.metadata.id = 5;
        let mut truncated = reply(&sent, &[a("v.test.", "192.0.2.1")]);
        truncated.metadata.truncation = true;
        let bytes = truncated.to_vec().unwrap();
        assert!(matches!(
            handler.answer(&forward, 5, &bytes, true),
            Answered::RetryOverTcp
        ));
        let Answered::Reply(reply) = handler.answer(&forward, 5, &bytes, false) else {
            panic!("relayed");
        };
        assert_eq!(reply.outcome, Outcome::Truncated);
        assert!(firewall.calls().is_empty());
    }

    #[test]
    fn an_upstream_failure_is_servfail() {
        let (handler, _) = handler(Blacklist::default());
        let forward = forward(&handler, "v.test.");
        let error = std::io::Error::other("no route");
        let reply = handler.failed(&forward, &error);
        assert_eq!(reply.outcome, Outcome::ServFail);
        let m = Message::from_vec(&reply.bytes.unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, 0x4242);
    }
}

/// Questions judged by the policy of the client's cgroup, as the firewall recorded it.
mod policies {
    use std::{net::SocketAddr, sync::Arc};

    use hickory_proto::{
        op::{Message, ResponseCode},
        rr::RecordType,
    };

    use super::super::{Answered, ClientTransport, Handler, Outcome, Step};
    use crate::{
        authorizer::Authorizer,
        dns::testutil::*,
        firewall::{
            ClientScope, Firewall as _, Grant, Policy, Scope, Transport, boottime_ns,
            fake::FakeFirewall,
        },
        scopes::{PolicyTable, scope_of_name, test_table},
    };

    const CI: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40001);
    const AUDITED: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40002);
    const UNKNOWN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40003);

    /// Policy "ci" (enforce) allows `example.com` and below `example.org`; policy "observe"
    /// (audit, called `watch` below) allows `example.net`. `CI` sent from a cgroup of policy 1, `AUDITED` of policy 2,
    /// `UNKNOWN` has no record.
    fn handler() -> (Handler, Arc<FakeFirewall>) {
        let firewall = Arc::new(FakeFirewall::new(Policy::default()));
        for (client, scope) in [(CI, ci()), (AUDITED, watch())] {
            let who = ClientScope {
                cgroup_id: 100 + u64::from(scope.0),
                scope,
                audit: scope == watch(),
            };
            firewall.set_client(Transport::Udp, client, who);
        }
        let authorizer = Authorizer::new(firewall.clone(), None);
        authorizer.set_policies(Arc::new(test_table()));
        (Handler::new(authorizer, true), firewall)
    }

    /// Asks `qname` (type `qtype`) from `client`; a forwarded query is answered with `ip`.
    fn ask(handler: &Handler, client: SocketAddr, qname: &str, qtype: RecordType) -> Outcome {
        let query = query_bytes(qname, qtype, 7);
        match handler.step(&query, ClientTransport::Udp, client) {
            Step::Reply(reply) => {
                let message = Message::from_vec(&reply.bytes.unwrap()).unwrap();
                assert_eq!(message.metadata.response_code, ResponseCode::Refused);
                reply.outcome
            }
            Step::Forward(mut forward) => {
                let sent = Message::from_vec(forward.query_with_id(9)).unwrap();
                let answer = reply(&sent, &[a(qname, "192.0.2.10")]).to_vec().unwrap();
                match handler.answer(&forward, 9, &answer, true) {
                    Answered::Reply(reply) => reply.outcome,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    fn ci() -> Scope {
        scope_of_name("ci")
    }

    fn watch() -> Scope {
        scope_of_name("observe")
    }

    fn granted(firewall: &FakeFirewall, scope: Scope) -> bool {
        firewall.has_grant(Grant::new(scope, "192.0.2.10".parse().unwrap()))
    }

    #[test]
    fn a_name_outside_the_policy_is_refused_without_reaching_the_upstream() {
        let (handler, firewall) = handler();
        for qtype in [RecordType::A, RecordType::TXT, RecordType::AAAA] {
            // A forwarded query would be answered and authorize 192.0.2.10.
            assert_eq!(
                ask(&handler, CI, "tunnel.attacker.test.", qtype),
                Outcome::NotAllowed
            );
        }
        assert_eq!(
            ask(&handler, CI, "example.org.", RecordType::A),
            Outcome::NotAllowed
        );
        assert!(firewall.authorized().unwrap().is_empty());
    }

    #[test]
    fn an_allowed_name_authorizes_only_for_the_policy_that_asked() {
        let (handler, firewall) = handler();
        assert_eq!(
            ask(&handler, CI, "Example.COM.", RecordType::A),
            Outcome::Answered
        );
        assert!(granted(&firewall, ci()));
        assert!(
            !granted(&firewall, Scope::DEFAULT),
            "a policy's grant opened the default scope"
        );
        let addr = "192.0.2.10".parse().unwrap();
        let now = boottime_ns();
        assert!(firewall.allows_from(ci(), addr, now));
        assert!(!firewall.allows_from(watch(), addr, now));
        assert!(!firewall.allows(addr, now));
        assert_eq!(
            ask(&handler, CI, "a.b.example.org.", RecordType::A),
            Outcome::Answered
        );
    }

    #[test]
    fn audit_mode_resolves_and_authorizes_names_it_would_refuse() {
        let (handler, firewall) = handler();
        assert_eq!(
            ask(&handler, AUDITED, "other.test.", RecordType::A),
            Outcome::Answered
        );
        assert!(granted(&firewall, watch()));
        assert!(!granted(&firewall, ci()) && !granted(&firewall, Scope::DEFAULT));
    }

    #[test]
    fn a_client_without_a_record_is_in_the_default_scope() {
        let (handler, firewall) = handler();
        assert_eq!(
            ask(&handler, UNKNOWN, "other.test.", RecordType::A),
            Outcome::Answered
        );
        assert!(granted(&firewall, Scope::DEFAULT));
        assert!(!granted(&firewall, ci()) && !granted(&firewall, watch()));
    }

    #[test]
    fn without_policies_nothing_is_looked_up() {
        let (handler, firewall) = handler();
        handler
            .authorizer
            .set_policies(Arc::new(PolicyTable::default()));
        assert_eq!(
            ask(&handler, CI, "other.test.", RecordType::A),
            Outcome::Answered
        );
        assert!(granted(&firewall, Scope::DEFAULT) && !granted(&firewall, ci()));
    }
}
