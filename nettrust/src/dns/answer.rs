//! What an upstream answer is allowed to authorize.
//!
//! An answer is accepted only when it is the response to the query we sent (ID, QR=1, exactly one
//! question equal to ours), and only the A/AAAA records owned by the question's name or by a name
//! reached from it through the answer's CNAME chain authorize anything: an upstream (or an
//! attacker) cannot open the firewall for an unrelated name by adding records to an answer.

use std::net::IpAddr;

use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{DNSClass, Name, RData, Record},
};

/// Longest CNAME chain followed from the question (RFC 1034 §3.6.2 chains are short in practice;
/// resolvers such as BIND stop at 16 as well).
pub const MAX_CNAME_CHAIN: usize = 16;

/// Why an upstream response was not accepted as the answer to our query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The response carries another ID than the one we sent.
    #[error("response ID {got} does not match query ID {expected}")]
    Id {
        /// ID we sent.
        expected: u16,
        /// ID received.
        got: u16,
    },
    /// The message is a query (QR=0), not a response.
    #[error("message is not a response (QR=0)")]
    NotResponse,
    /// The response does not carry exactly one question.
    #[error("response has {0} questions, expected 1")]
    QuestionCount(usize),
    /// The response's question differs from ours (name compared case-insensitively).
    #[error("response question {got} does not match query {expected}")]
    Question {
        /// Our question.
        expected: String,
        /// The response's question.
        got: String,
    },
}

/// Why an upstream message was not taken as the answer.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Not a DNS message.
    #[error("not a DNS message")]
    Malformed,
    /// A DNS message, but not the response to our query.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
}

impl Rejection {
    /// The `result` label of `nettrust_rejected_answers_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Mismatch(_) => "forged",
        }
    }
}

/// `bytes` parsed, if they are the response to the query with `id` and `question`.
pub fn accept(bytes: &[u8], id: u16, question: &Query) -> Result<Message, Rejection> {
    let message = Message::from_vec(bytes).map_err(|_| Rejection::Malformed)?;
    check_response(&message, id, question)?;
    Ok(message)
}

/// Checks that `response` answers the query with `id` and `question`.
pub fn check_response(response: &Message, id: u16, question: &Query) -> Result<(), Mismatch> {
    if response.metadata.id != id {
        return Err(Mismatch::Id {
            expected: id,
            got: response.metadata.id,
        });
    }
    if response.metadata.message_type != MessageType::Response {
        return Err(Mismatch::NotResponse);
    }
    let [got] = response.queries.as_slice() else {
        return Err(Mismatch::QuestionCount(response.queries.len()));
    };
    // `Name`'s equality is case-insensitive (RFC 4343).
    if got.name != question.name
        || got.query_type != question.query_type
        || got.query_class != question.query_class
    {
        return Err(Mismatch::Question {
            expected: question.to_string(),
            got: got.to_string(),
        });
    }
    Ok(())
}

/// The names of the question's CNAME chain (the question's name first) and the addresses they own.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChainAnswer {
    /// Question name, then each CNAME target reached from it, in order.
    pub names: Vec<Name>,
    /// A/AAAA addresses owned by a name of the chain, deduplicated, without the unspecified
    /// addresses 0.0.0.0 and :: (the answer of blackholing resolvers).
    pub addresses: Vec<IpAddr>,
    /// A/AAAA records in the answer section that were ignored because their owner is not on the
    /// chain.
    pub unrelated: usize,
}

/// Follows the CNAME chain of `question` through `answers` and collects the addresses on it.
pub fn chain_addresses(question: &Query, answers: &[Record]) -> ChainAnswer {
    let mut names = vec![question.name.clone()];
    // Follow CNAMEs in any order of the records, at most MAX_CNAME_CHAIN hops, no loops.
    while names.len() <= MAX_CNAME_CHAIN {
        let current = names.last().expect("chain starts with the question");
        let next = answers.iter().find_map(|record| match &record.data {
            RData::CNAME(target) if record.dns_class == DNSClass::IN && record.name == *current => {
                Some(target.0.clone())
            }
            _ => None,
        });
        match next {
            Some(target) if !names.contains(&target) => names.push(target),
            _ => break,
        }
    }
    let mut chain = ChainAnswer {
        names,
        ..ChainAnswer::default()
    };
    for record in answers {
        let addr = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if record.dns_class != DNSClass::IN || !chain.names.contains(&record.name) {
            chain.unrelated += 1;
            continue;
        }
        if !addr.is_unspecified() && !chain.addresses.contains(&addr) {
            chain.addresses.push(addr);
        }
    }
    chain
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::dns::testutil::{a, aaaa, cname, name};

    fn q(n: &str, t: RecordType) -> Query {
        Query::query(name(n), t)
    }
    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_records_of_the_question_are_taken() {
        let got = chain_addresses(
            &q("www.example.com.", RecordType::A),
            &[
                a("www.example.com.", "192.0.2.1"),
                a("www.example.com.", "192.0.2.2"),
            ],
        );
        assert_eq!(got.addresses, ips(&["192.0.2.1", "192.0.2.2"]));
        assert_eq!(got.unrelated, 0);
    }

    #[test]
    fn aaaa_records_are_taken() {
        let got = chain_addresses(
            &q("v6.example.", RecordType::AAAA),
            &[aaaa("v6.example.", "2001:db8::1")],
        );
        assert_eq!(got.addresses, ips(&["2001:db8::1"]));
    }

    #[test]
    fn cname_chain_is_followed_in_any_record_order() {
        let answers = [
            a("edge.cdn.example.", "203.0.113.7"),
            cname("alias.example.", "edge.cdn.example."),
            cname("www.example.", "alias.example."),
        ];
        let got = chain_addresses(&q("WWW.Example.", RecordType::A), &answers);
        assert_eq!(got.names.len(), 3);
        assert_eq!(got.addresses, ips(&["203.0.113.7"]));
    }

    #[test]
    fn records_off_the_chain_authorize_nothing() {
        let answers = [
            cname("www.example.", "edge.example."),
            a("edge.example.", "192.0.2.10"),
            a("evil.example.", "198.51.100.66"),
            aaaa("www.other.", "2001:db8::66"),
        ];
        let got = chain_addresses(&q("www.example.", RecordType::A), &answers);
        assert_eq!(got.addresses, ips(&["192.0.2.10"]));
        assert_eq!(got.unrelated, 2);
    }

    #[test]
    fn cname_rooted_elsewhere_authorizes_nothing() {
        let answers = [
            cname("other.example.", "target.example."),
            a("target.example.", "192.0.2.9"),
        ];
        let got = chain_addresses(&q("www.example.", RecordType::A), &answers);
        assert!(got.addresses.is_empty());
        assert_eq!(got.unrelated, 1);
    }

    #[test]
    fn unspecified_addresses_are_dropped() {
        let answers = [a("ads.example.", "0.0.0.0"), aaaa("ads.example.", "::")];
        let got = chain_addresses(&q("ads.example.", RecordType::A), &answers);
        assert!(got.addresses.is_empty());
    }

    #[test]
    fn empty_answer_gives_nothing() {
        let got = chain_addresses(&q("empty.example.", RecordType::A), &[]);
        assert!(got.addresses.is_empty());
        assert_eq!(got.names, vec![name("empty.example.")]);
    }

    #[test]
    fn duplicate_addresses_are_listed_once() {
        let answers = [a("d.example.", "192.0.2.3"), a("d.example.", "192.0.2.3")];
        let got = chain_addresses(&q("d.example.", RecordType::A), &answers);
        assert_eq!(got.addresses, ips(&["192.0.2.3"]));
    }

    #[test]
    fn cname_loop_terminates() {
        let answers = [
            cname("a.example.", "b.example."),
            cname("b.example.", "a.example."),
        ];
        let got = chain_addresses(&q("a.example.", RecordType::A), &answers);
        assert_eq!(got.names.len(), 2);
        assert!(got.addresses.is_empty());
    }

    #[test]
    fn chain_length_is_capped() {
        let mut answers: Vec<Record> = (0..40)
            .map(|i| cname(&format!("n{i}.example."), &format!("n{}.example.", i + 1)))
            .collect();
        answers.push(a("n40.example.", "192.0.2.40"));
        answers.push(a("n3.example.", "192.0.2.3"));
        let got = chain_addresses(&q("n0.example.", RecordType::A), &answers);
        assert_eq!(got.names.len(), MAX_CNAME_CHAIN + 1);
        assert_eq!(got.addresses, ips(&["192.0.2.3"]));
    }

    fn response_to(id: u16, question: Query) -> Message {
        let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
        m.add_query(question);
        m
    }

    #[test]
    fn matching_response_is_accepted_case_insensitively() {
        let question = q("www.example.", RecordType::A);
        let response = response_to(7, q("WWW.EXAMPLE.", RecordType::A));
        assert_eq!(check_response(&response, 7, &question), Ok(()));
    }

    #[test]
    fn mismatching_responses_are_rejected() {
        let question = q("www.example.", RecordType::A);
        assert!(matches!(
            check_response(&response_to(8, question.clone()), 7, &question),
            Err(Mismatch::Id {
                expected: 7,
                got: 8
            })
        ));
        let mut not_response = response_to(7, question.clone());
        not_response.metadata.message_type = MessageType::Query;
        assert_eq!(
            check_response(&not_response, 7, &question),
            Err(Mismatch::NotResponse)
        );
        let other = response_to(7, q("www.example.", RecordType::AAAA));
        assert!(matches!(
            check_response(&other, 7, &question),
            Err(Mismatch::Question { .. })
        ));
        let mut two = response_to(7, question.clone());
        two.add_query(question.clone());
        assert_eq!(
            check_response(&two, 7, &question),
            Err(Mismatch::QuestionCount(2))
        );
        let none = Message::response(7, hickory_proto::op::OpCode::Query);
        assert_eq!(
            check_response(&none, 7, &question),
            Err(Mismatch::QuestionCount(0))
        );
    }
}
