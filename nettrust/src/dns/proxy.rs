//! One client query, start to finish: parse, forward under a fresh random ID, accept only the
//! matching answer, authorize its addresses, and only then relay the answer (with the client's ID
//! restored, otherwise byte for byte). A failed authorization turns into SERVFAIL: the client never
//! receives an address the firewall does not allow.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};

use super::upstream::{Upstream, UpstreamError};
use crate::{authorizer::Authorizer, error_chain};

/// How the client's query arrived; the upstream is asked over the same transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTransport {
    /// UDP: answers are limited to the client's advertised payload size.
    Udp,
    /// TCP.
    Tcp,
}

/// The DNS proxy's query handler.
pub struct Proxy {
    upstream: Upstream,
    authorizer: Authorizer,
}

impl Proxy {
    /// A proxy forwarding to `upstream` and authorizing through `authorizer`.
    pub fn new(upstream: Upstream, authorizer: Authorizer) -> Self {
        Self {
            upstream,
            authorizer,
        }
    }

    /// Handles one query; `None` means no reply is sent (e.g. the message was a response).
    pub async fn handle(&self, query: &[u8], transport: ClientTransport) -> Option<Vec<u8>> {
        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(e) => {
                tracing::debug!("dropping an unparsable query: {e}");
                return unparsable_query_response(query);
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        if request.metadata.op_code != OpCode::Query {
            return error_response(&request, ResponseCode::NotImp);
        }
        let [question] = request.queries.as_slice() else {
            return error_response(&request, ResponseCode::FormErr);
        };
        let upstream_id: u16 = rand::random();
        let mut forwarded = query.to_vec();
        forwarded[..2].copy_from_slice(&upstream_id.to_be_bytes());

        let result = match transport {
            ClientTransport::Tcp => {
                self.upstream
                    .exchange_tcp(&forwarded, upstream_id, question)
                    .await
            }
            ClientTransport::Udp => {
                match self
                    .upstream
                    .exchange_udp(&forwarded, upstream_id, question)
                    .await
                {
                    Ok((truncated, answer)) if answer.metadata.truncation => {
                        // Nothing is ever taken from a truncated answer: ask again over TCP, and
                        // relay the truncated answer unauthorized if that does not fit.
                        match self
                            .upstream
                            .exchange_tcp(&forwarded, upstream_id, question)
                            .await
                        {
                            Ok((full, answer))
                                if full.len() <= usize::from(request.max_payload().max(512)) =>
                            {
                                Ok((full, answer))
                            }
                            _ => return Some(with_id(truncated, request.metadata.id)),
                        }
                    }
                    other => other,
                }
            }
        };
        let (answer_bytes, answer) = match result {
            Ok(ok) => ok,
            Err(e) => {
                log_upstream_error(&question.name, &e);
                return error_response(&request, ResponseCode::ServFail);
            }
        };
        if answer.metadata.truncation {
            return Some(with_id(answer_bytes, request.metadata.id));
        }
        if let Err(e) = self.authorizer.authorize(question, &answer) {
            tracing::error!(
                "[Firewall Error] Question {}: {}; answering SERVFAIL",
                question.name,
                error_chain(&e)
            );
            return error_response(&request, ResponseCode::ServFail);
        }
        Some(with_id(answer_bytes, request.metadata.id))
    }
}

fn log_upstream_error(qname: &hickory_proto::rr::Name, e: &UpstreamError) {
    tracing::warn!(
        "[Upstream Error] Question {qname}: {}; answering SERVFAIL",
        error_chain(e)
    );
}

/// Puts the client's ID back into a relayed message.
fn with_id(mut message: Vec<u8>, id: u16) -> Vec<u8> {
    message[..2].copy_from_slice(&id.to_be_bytes());
    message
}

/// A response to `request` that carries only `rcode` and the question.
pub fn error_response(request: &Message, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut response = Message::error_msg(request.metadata.id, request.metadata.op_code, rcode);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    response.to_vec().ok()
}

/// FORMERR for a query whose header is readable but whose body is not (RFC 1035 §4.1.1); nothing
/// for garbage shorter than a header or for responses.
fn unparsable_query_response(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

#[cfg(test)]
mod tests {
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
}
