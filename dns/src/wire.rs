//! DNS messages on the wire: encoding a response that fits the client's
//! limit (RFC 1035 4.2.1, RFC 2181 9, RFC 6891 7), and relaying an
//! upstream's response as bytes, without decoding its records, so a large
//! forwarded answer costs its size in bytes and no more (in flight and in
//! the cache).

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, Metadata},
    rr::Record,
    serialize::binary::{BinEncodable as _, BinEncoder},
    ProtoError,
};
use hickory_server::zone_handler::Queries;

/// Bytes an OPT record without options takes (root name, type, class, TTL, rdlength).
pub const OPT_LEN: usize = 11;
const HEADER_LEN: usize = 12;
const TYPE_OPT: u16 = 41;
const TYPE_SOA: u16 = 6;

/// A response's sections, borrowed.
pub struct Sections<'a> {
    pub answers: &'a [Record],
    pub authorities: &'a [Record],
    pub additionals: &'a [Record],
}

/// Encodes a response into `out` (cleared first) in at most `limit` bytes.
///
/// Records are written whole. When an answer or authority record does not
/// fit, TC is set and nothing after it is written; when only additional
/// records do not fit they are left out without TC (RFC 2181 9). The OPT
/// record of an EDNS response always fits: its room is kept aside.
///
/// # Errors
/// Only when not even the header and question fit (the caller answers SERVFAIL).
pub fn encode_response(
    metadata: &Metadata,
    queries: &Queries,
    sections: &Sections<'_>,
    edns: Option<&Edns>,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<Header, ProtoError> {
    out.clear();
    let limit = limit.min(usize::from(u16::MAX));
    let opt_room = if edns.is_some() { OPT_LEN } else { 0 };
    let body_limit = u16::try_from(limit.saturating_sub(opt_room)).unwrap_or(u16::MAX);
    let mut encoder = BinEncoder::new(out);
    encoder.set_max_size(body_limit);
    let place = encoder.place::<Header>()?;
    // Emitted name by name (not copied as bytes) so every suffix of the
    // question is a compression target for the owners and targets after it.
    for q in queries.queries() {
        q.original().emit(&mut encoder)?;
    }
    let query_count = queries.len();

    let mut truncated = false;
    let answers = emit_whole(&mut encoder, sections.answers, &mut truncated)?;
    let authorities = if truncated { 0 } else { emit_whole(&mut encoder, sections.authorities, &mut truncated)? };
    let mut additionals = if truncated {
        0
    } else {
        // Additional data is optional: what does not fit is left out, TC stays clear.
        let mut dropped = false;
        emit_whole(&mut encoder, sections.additionals, &mut dropped)?
    };
    if let Some(edns) = edns {
        encoder.set_max_size(u16::try_from(limit).unwrap_or(u16::MAX));
        let mut edns = edns.clone();
        edns.set_rcode_high(metadata.response_code.high());
        Record::from(&edns).emit(&mut encoder)?;
        additionals += 1;
    }
    let mut metadata = *metadata;
    metadata.truncation |= truncated;
    let header = Header {
        metadata,
        counts: HeaderCounts {
            queries: u16::try_from(query_count).unwrap_or(u16::MAX),
            answers,
            authorities,
            additionals,
        },
    };
    place.replace(&mut encoder, header)?;
    let end = encoder.offset();
    out.truncate(end);
    Ok(header)
}

/// Emits records while they fit; on the first that does not, rolls it back,
/// sets `truncated` and stops.
fn emit_whole(encoder: &mut BinEncoder<'_>, records: &[Record], truncated: &mut bool) -> Result<u16, ProtoError> {
    let mut count: u16 = 0;
    for r in records {
        if count == u16::MAX {
            *truncated = true;
            break;
        }
        let at = encoder.offset();
        match r.emit(encoder) {
            Ok(()) => count += 1,
            Err(ProtoError::MaxBufferSizeExceeded(_)) => {
                // Name pointers recorded past `at` are never used: nothing follows in this section.
                encoder.set_offset(at);
                *truncated = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(count)
}

/// Why bytes are not a DNS message this module can walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message shorter than its header")]
    Short,
    #[error("a name runs past the end of the message")]
    Name,
    #[error("a record runs past the end of the message")]
    Record,
    #[error("trailing bytes after the last record")]
    Trailing,
}

/// Offset just past the (possibly compressed) name starting at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, WireError> {
    // A name is at most 255 bytes: 128 labels bound the walk.
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(WireError::Name)?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => {
                msg.get(at + 1).ok_or(WireError::Name)?;
                return Ok(at + 2);
            }
            l if l & 0xc0 != 0 => return Err(WireError::Name),
            l => at += 1 + usize::from(l),
        }
    }
    Err(WireError::Name)
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, WireError> {
    Ok(u16::from_be_bytes([*msg.get(at).ok_or(WireError::Record)?, *msg.get(at + 1).ok_or(WireError::Record)?]))
}

fn u32_at(msg: &[u8], at: usize) -> Result<u32, WireError> {
    Ok(u32::from(u16_at(msg, at)?) << 16 | u32::from(u16_at(msg, at + 2)?))
}

/// The end of the question section of a one-question message.
///
/// # Errors
/// When the message is too short or its question runs past its end.
pub fn question_end(msg: &[u8]) -> Result<usize, WireError> {
    if msg.len() < HEADER_LEN || u16_at(msg, 4)? != 1 {
        return Err(WireError::Short);
    }
    let end = skip_name(msg, HEADER_LEN)? + 4;
    if end > msg.len() {
        return Err(WireError::Name);
    }
    Ok(end)
}

/// Which section a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

/// One resource record of a message, as offsets.
#[derive(Debug, Clone, Copy)]
pub struct Rr {
    pub start: usize,
    pub end: usize,
    /// Offset of the TTL field.
    pub ttl_at: usize,
    pub rtype: u16,
    pub section: Section,
}

/// A walked message: where its question ends and where each record lies.
#[derive(Debug)]
pub struct Walk {
    pub question_end: usize,
    pub qdcount: u16,
    pub rrs: Vec<Rr>,
}

/// Walks the sections of `msg` without decoding names or data.
///
/// # Errors
/// When a count, a name or a length points past the end, or bytes trail.
pub fn walk(msg: &[u8]) -> Result<Walk, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::Short);
    }
    let qdcount = u16_at(msg, 4)?;
    let counts = [u16_at(msg, 6)?, u16_at(msg, 8)?, u16_at(msg, 10)?];
    let mut at = HEADER_LEN;
    for _ in 0..qdcount {
        at = skip_name(msg, at)? + 4;
        if at > msg.len() {
            return Err(WireError::Name);
        }
    }
    let question_end = at;
    let total: usize = counts.iter().map(|c| usize::from(*c)).sum();
    // Every record takes at least 11 bytes: a count beyond that is a lie, not a reason to allocate.
    let mut rrs = Vec::with_capacity(total.min((msg.len() - at) / 11));
    for (section, count) in [Section::Answer, Section::Authority, Section::Additional].into_iter().zip(counts) {
        for _ in 0..count {
            let start = at;
            let fixed = skip_name(msg, at)?;
            let rtype = u16_at(msg, fixed)?;
            let rdlen = usize::from(u16_at(msg, fixed + 8)?);
            let end = fixed + 10 + rdlen;
            if end > msg.len() {
                return Err(WireError::Record);
            }
            rrs.push(Rr { start, end, ttl_at: fixed + 4, rtype, section });
            at = end;
        }
    }
    if at != msg.len() {
        return Err(WireError::Trailing);
    }
    Ok(Walk { question_end, qdcount, rrs })
}

/// How long a forwarded response may be cached (RFC 2308): the smallest
/// answer TTL for data; min(SOA TTL, SOA minimum) for NXDOMAIN and NODATA;
/// nothing for other codes or truncated answers. Caps apply; 0 means "do not cache".
pub fn cache_ttl(msg: &[u8], walk: &Walk, max_ttl: u32, max_negative_ttl: u32) -> Option<u32> {
    let rcode = msg[3] & 0x0f;
    let answers = walk.rrs.iter().filter(|r| r.section == Section::Answer);
    let negative = rcode == 3 || (rcode == 0 && answers.clone().next().is_none());
    if negative {
        let soa = walk.rrs.iter().find(|r| r.section == Section::Authority && r.rtype == TYPE_SOA)?;
        let ttl = u32_at(msg, soa.ttl_at).ok()?;
        // The SOA minimum is the last four bytes of its data.
        let minimum = u32_at(msg, soa.end.checked_sub(4)?).ok()?;
        return Some(ttl.min(minimum).min(max_negative_ttl)).filter(|t| *t > 0);
    }
    if rcode != 0 || msg[2] & 0x02 != 0 {
        return None;
    }
    answers.filter_map(|r| u32_at(msg, r.ttl_at).ok()).min().map(|t| t.min(max_ttl)).filter(|t| *t > 0)
}

/// How the TTLs of a relayed response change: counted down by the age of a
/// cache entry, never above the entry's TTL, never below 1.
#[derive(Debug, Clone, Copy)]
pub struct Aging {
    pub age: u32,
    pub cap: u32,
}

/// What the client asked, as the relay needs it.
pub struct Client<'a> {
    /// The client's whole query.
    pub query: &'a [u8],
    /// The end of the client's question section.
    pub question_end: usize,
    /// The client sent an OPT record: the response carries ours.
    pub edns: Option<&'a Edns>,
    /// Largest response the client takes.
    pub limit: usize,
}

/// Writes `upstream` (a walked response) to `out` as the response to the
/// client's query: the client's id, RD, CD and question spelling, RA set, AA
/// clear, the upstream's records (TTLs aged when from the cache), the
/// upstream OPT replaced by ours or dropped, cut to the client's limit at a
/// record boundary (TC set when an answer or authority record is cut).
///
/// # Errors
/// When the response cannot be relayed as bytes (an OPT record before other
/// records, or a question of another length); the caller decodes it instead.
pub fn relay(upstream: &[u8], walk: &Walk, client: &Client<'_>, aging: Option<Aging>, out: &mut Vec<u8>) -> Result<(), WireError> {
    out.clear();
    let opt_last = walk.rrs.iter().position(|r| r.rtype == TYPE_OPT).is_none_or(|i| i == walk.rrs.len() - 1);
    let client_q = client.query.get(HEADER_LEN..client.question_end).ok_or(WireError::Short)?;
    let upstream_q = &upstream[HEADER_LEN..walk.question_end];
    if !opt_last || walk.qdcount != 1 || client_q.len() != upstream_q.len() || !client_q.eq_ignore_ascii_case(upstream_q) {
        return Err(WireError::Record);
    }
    let opt_room = if client.edns.is_some() { OPT_LEN } else { 0 };
    let limit = client.limit.min(usize::from(u16::MAX));
    let body_limit = limit.saturating_sub(opt_room);

    out.extend_from_slice(&client.query[..2]);
    // QR, opcode QUERY, AA clear, TC from upstream, RD from the client.
    out.push(0x80 | (upstream[2] & 0x02) | (client.query[2] & 0x01));
    // RA set, Z clear, AD from upstream, CD from the client, RCODE from upstream.
    out.push(0x80 | (upstream[3] & 0x20) | (client.query[3] & 0x10) | (upstream[3] & 0x0f));
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(client_q);

    let mut counts = [0u16; 3];
    let mut cut = false;
    for rr in &walk.rrs {
        if rr.rtype == TYPE_OPT {
            continue;
        }
        if out.len() + (rr.end - rr.start) > body_limit {
            // Missing additional data is no reason for TC (RFC 2181 9).
            cut = rr.section != Section::Additional;
            break;
        }
        let at = out.len();
        out.extend_from_slice(&upstream[rr.start..rr.end]);
        if let Some(Aging { age, cap }) = aging {
            let ttl_at = at + (rr.ttl_at - rr.start);
            let ttl = u32_at(out, ttl_at).unwrap_or(0);
            let aged = ttl.saturating_sub(age).max(1).min(cap.saturating_sub(age).max(1));
            out[ttl_at..ttl_at + 4].copy_from_slice(&aged.to_be_bytes());
        }
        counts[rr.section as usize] += 1;
    }
    if cut {
        out[2] |= 0x02;
    }
    if let Some(edns) = client.edns {
        // Root owner, type OPT, class = payload size, extended RCODE/version/flags 0, no options.
        let [hi, lo] = edns.max_payload().to_be_bytes();
        out.extend_from_slice(&[0, 0, 41, hi, lo, 0, 0, 0, 0, 0, 0]);
        counts[2] += 1;
    }
    for (i, c) in counts.iter().enumerate() {
        out[6 + 2 * i..8 + 2 * i].copy_from_slice(&c.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query, ResponseCode},
        rr::{rdata::SOA, Name, RData, RecordType},
    };

    use super::*;

    fn upstream(n: usize, with_opt: bool) -> Vec<u8> {
        let name = Name::from_ascii("big.example.org.").unwrap();
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.add_query(Query::query(name.clone(), RecordType::A));
        for i in 0..n {
            m.add_answer(Record::from_rdata(name.clone(), 300, RData::A(Ipv4Addr::new(192, 0, 2, (i % 250) as u8).into())));
        }
        m.add_additional(Record::from_rdata(
            Name::from_ascii("ns.example.org.").unwrap(),
            300,
            RData::A(Ipv4Addr::new(192, 0, 2, 53).into()),
        ));
        if with_opt {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn client(name: &str, edns: bool) -> Vec<u8> {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn relayed(up: &[u8], q: &[u8], limit: usize, aging: Option<Aging>) -> Message {
        let w = walk(up).expect("upstream walks");
        let qw = walk(q).expect("query walks");
        let edns = Edns::new();
        let c = Client { query: q, question_end: qw.question_end, edns: (qw.rrs.len() == 1).then_some(&edns), limit };
        let mut out = Vec::new();
        relay(up, &w, &c, aging, &mut out).expect("relayable");
        assert!(out.len() <= limit, "relayed {} bytes over the limit {limit}", out.len());
        walk(&out).expect("the relayed message walks with no trailing bytes");
        Message::from_vec(&out).expect("the relayed message decodes")
    }

    #[test]
    fn relay_takes_the_clients_id_and_spelling_and_keeps_every_record_that_fits() {
        let up = upstream(3, true);
        let m = relayed(&up, &client("BIG.Example.org.", true), 1232, None);
        assert_eq!(m.metadata.id, 0x4242);
        assert!(!m.metadata.truncation && m.metadata.recursion_available && !m.metadata.authoritative);
        assert_eq!(m.answers.len(), 3);
        assert_eq!(m.additionals.len(), 1, "the glue, the upstream OPT replaced by ours");
        assert!(m.edns.is_some());
        assert!(m.answers[0].name.eq_case(&Name::from_ascii("BIG.Example.org.").unwrap()), "owner compressed to the question keeps the client's case");
    }

    #[test]
    fn relay_cuts_at_a_record_boundary_with_tc_and_drops_opt_for_clients_without_edns() {
        let up = upstream(100, true);
        let m = relayed(&up, &client("big.example.org.", false), 512, None);
        assert!(m.metadata.truncation, "100 answers do not fit in 512 bytes");
        assert!(m.answers.len() < 100 && !m.answers.is_empty());
        assert!(m.edns.is_none(), "no OPT for a client that sent none");
    }

    #[test]
    fn relay_leaves_out_additional_data_that_does_not_fit_without_tc() {
        let up = upstream(29, false);
        // 29 answers fit in 512 bytes; the glue record does not.
        let w = walk(&up).unwrap();
        let glue = w.rrs.last().unwrap();
        let limit = glue.start;
        let m = relayed(&up, &client("big.example.org.", false), limit, None);
        assert_eq!(m.answers.len(), 29);
        assert!(m.additionals.is_empty() && !m.metadata.truncation, "RFC 2181 9: no TC for missing additional data");
    }

    #[test]
    fn relay_ages_ttls_from_the_cache() {
        let up = upstream(2, false);
        let m = relayed(&up, &client("big.example.org.", false), 512, Some(Aging { age: 100, cap: 250 }));
        assert!(m.answers.iter().all(|r| r.ttl == 150), "min(300, 250) - 100 = 150: {:?}", m.answers);
        let m = relayed(&up, &client("big.example.org.", false), 512, Some(Aging { age: 400, cap: 250 }));
        assert!(m.answers.iter().all(|r| r.ttl == 1), "never below 1");
    }

    #[test]
    fn fuzz_seeds_of_upstream_responses_do_not_panic() {
        let base = upstream(40, true);
        crate::testing::fuzz_upstream(&base);
        for i in 0..base.len().min(200) {
            crate::testing::fuzz_upstream(&base[..i]);
            for v in [0u8, 0x3f, 0xc0, 0xff] {
                let mut b = base.clone();
                b[i] = v;
                crate::testing::fuzz_upstream(&b);
            }
        }
    }

    #[test]
    fn walk_rejects_lies() {
        let mut up = upstream(2, false);
        up[7] = 9; // ancount 9
        assert!(walk(&up).is_err(), "counts beyond the data");
        let mut up = upstream(2, false);
        up.push(0);
        assert_eq!(walk(&up).unwrap_err(), WireError::Trailing);
        assert!(walk(&[0; 5]).is_err());
        // A pointer loop never hangs: names are walked, not followed.
        let looped = [0u8, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert!(walk(&looped).is_ok());
    }

    #[test]
    fn cache_ttl_follows_rfc2308_on_the_wire() {
        let org = Name::from_ascii("org.").unwrap();
        let mk = |rcode: ResponseCode, answers: &[u32], soa: Option<(u32, u32)>, tc: bool| {
            let mut m = Message::new(1, MessageType::Response, OpCode::Query);
            m.metadata.response_code = rcode;
            m.metadata.truncation = tc;
            m.add_query(Query::query(org.clone(), RecordType::A));
            for t in answers {
                m.add_answer(Record::from_rdata(org.clone(), *t, RData::A(Ipv4Addr::LOCALHOST.into())));
            }
            if let Some((ttl, min)) = soa {
                m.add_authority(Record::from_rdata(org.clone(), ttl, RData::SOA(SOA::new(org.clone(), org.clone(), 1, 1, 1, 1, min))));
            }
            m.to_vec().unwrap()
        };
        let cases = [
            ("positive: smallest TTL", mk(ResponseCode::NoError, &[30, 20], None, false), Some(20)),
            ("positive: capped", mk(ResponseCode::NoError, &[3000], None, false), Some(100)),
            ("TTL 0: not cached", mk(ResponseCode::NoError, &[0], None, false), None),
            ("truncated: not cached", mk(ResponseCode::NoError, &[30], None, true), None),
            ("NXDOMAIN: min(SOA TTL, minimum)", mk(ResponseCode::NXDomain, &[], Some((40, 10)), false), Some(10)),
            ("NODATA", mk(ResponseCode::NoError, &[], Some((7, 30)), false), Some(7)),
            ("negative: capped", mk(ResponseCode::NXDomain, &[], Some((900, 900)), false), Some(50)),
            ("negative without SOA", mk(ResponseCode::NXDomain, &[], None, false), None),
            ("SERVFAIL", mk(ResponseCode::ServFail, &[], Some((40, 40)), false), None),
        ];
        for (what, msg, want) in cases {
            let w = walk(&msg).unwrap();
            assert_eq!(cache_ttl(&msg, &w, 100, 50), want, "{what}");
        }
    }
}
