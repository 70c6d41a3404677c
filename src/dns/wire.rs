//! The DNS wire format, as far as an authoritative server for one small zone needs it (pure:
//! no sockets, no allocation).
//!
//! Reading: [`parse_query`] recognises a whole query (RFC 1035 §4.1 header and question,
//! RFC 6891 OPT in the additional section) before anything is answered, and tells a query it
//! cannot answer ([`ParseError::Drop`]) from one that gets FORMERR ([`ParseError::FormErr`]).
//! Every length is checked against what is left of the packet, so a lying count or label
//! length ends in an error, never an out-of-bounds read.
//!
//! Writing: [`Writer`] appends to a caller-owned buffer (reused across queries). Owner names
//! are written as compression pointers into the question (RFC 1035 §4.1.4), which always
//! holds the queried name and therefore the zone's apex as its suffix.

/// RFC 1035 §4.1.1.
pub const HEADER_LEN: usize = 12;
/// RFC 1035 §2.3.4.
pub const MAX_NAME: usize = 255;
/// RFC 1035 §2.3.4.
pub const MAX_LABEL: usize = 63;
/// Classic DNS over UDP without EDNS (RFC 1035 §2.3.4).
pub const CLASSIC_UDP: usize = 512;
/// What we advertise and cap answers at over UDP: the DNS Flag Day 2020 size, which avoids IP
/// fragmentation on ordinary paths.
pub const OUR_UDP_PAYLOAD: u16 = 1232;
/// Additional-section records we look through for the OPT record; a query has one or two
/// (OPT, maybe TSIG), so more is an attack on our parser, not a query.
const MAX_ADDITIONAL: u16 = 8;

pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const SOA: u16 = 6;
    pub const HINFO: u16 = 13;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
}

pub mod class {
    pub const IN: u16 = 1;
    pub const ANY: u16 = 255;
}

/// Response codes (RFC 1035 §4.1.1, RFC 6891 §9 for BADVERS, which is 16 and so needs the
/// OPT record's extended bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    BadVers,
}

impl Rcode {
    pub const ALL: [Rcode; 7] = [
        Rcode::NoError,
        Rcode::FormErr,
        Rcode::ServFail,
        Rcode::NxDomain,
        Rcode::NotImp,
        Rcode::Refused,
        Rcode::BadVers,
    ];

    pub fn value(self) -> u16 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::BadVers => 16,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "noerror",
            Rcode::FormErr => "formerr",
            Rcode::ServFail => "servfail",
            Rcode::NxDomain => "nxdomain",
            Rcode::NotImp => "notimp",
            Rcode::Refused => "refused",
            Rcode::BadVers => "badvers",
        }
    }
}

/// Why a packet was not a query we could read. The `as_str` values are the `reason` label of
/// `portico_dns_malformed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than a header (including the empty datagram).
    Short,
    /// QR is set: a response sent to us. Never answered, or two servers could ping-pong.
    Response,
    /// QDCOUNT is not 1 (RFC 9619: exactly one question).
    QuestionCount,
    /// A count or length promises more bytes than the packet has (or more records than any
    /// query carries, which we refuse to walk).
    Truncated,
    /// A label type other than a plain label (0x40/0x80 extended labels).
    Label,
    /// A compression pointer in the question: the only place it could point is the header or
    /// the name itself (a loop).
    Compression,
    /// A name longer than 255 bytes.
    NameTooLong,
    /// A bad OPT record: two of them, or one not owned by the root.
    Opt,
    /// Larger than any query we accept (UDP datagram beyond our buffer, TCP length too big).
    Oversized,
}

impl Malformed {
    pub const ALL: [Malformed; 9] = [
        Malformed::Short,
        Malformed::Response,
        Malformed::QuestionCount,
        Malformed::Truncated,
        Malformed::Label,
        Malformed::Compression,
        Malformed::NameTooLong,
        Malformed::Opt,
        Malformed::Oversized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Short => "short",
            Malformed::Response => "response",
            Malformed::QuestionCount => "question_count",
            Malformed::Truncated => "truncated",
            Malformed::Label => "label",
            Malformed::Compression => "compression",
            Malformed::NameTooLong => "name_too_long",
            Malformed::Opt => "opt",
            Malformed::Oversized => "oversized",
        }
    }
}

/// A packet that is not an answerable query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not answered at all (no header to answer with, or a response).
    Drop(Malformed),
    /// Answered with FORMERR carrying the query's id and opcode.
    FormErr {
        reason: Malformed,
        id: u16,
        /// The second header word as received (opcode and RD are echoed).
        flags: u16,
    },
}

impl ParseError {
    pub fn reason(self) -> Malformed {
        match self {
            ParseError::Drop(r) | ParseError::FormErr { reason: r, .. } => r,
        }
    }
}

/// The EDNS(0) part of a query (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_payload: u16,
    pub version: u8,
    /// DNSSEC OK; RFC 3225 §3 has us copy it into the answer.
    pub dnssec_ok: bool,
}

/// A query, borrowing the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    /// The second header word as received.
    pub flags: u16,
    /// The question name in wire form as the client wrote it (case kept for the echo).
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    /// The largest answer the client takes over UDP (RFC 6891 §6.2.5: below 512 means 512),
    /// capped at what we advertise.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            None => CLASSIC_UDP,
            Some(e) => usize::from(e.udp_payload.min(OUR_UDP_PAYLOAD)).max(CLASSIC_UDP),
        }
    }
}

/// A bounds-checked cursor.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Skips a name in a record of another section, where compression is legal: a pointer
    /// ends the name (we do not follow it; we never use these names).
    fn skip_name(&mut self) -> Result<(), Malformed> {
        let mut len = 0usize;
        loop {
            let l = self.u8().ok_or(Malformed::Truncated)?;
            match l & 0xc0 {
                0x00 if l == 0 => return Ok(()),
                0x00 => {
                    len += usize::from(l) + 1;
                    if len > MAX_NAME {
                        return Err(Malformed::NameTooLong);
                    }
                    self.take(usize::from(l)).ok_or(Malformed::Truncated)?;
                }
                0xc0 => {
                    self.u8().ok_or(Malformed::Truncated)?;
                    return Ok(());
                }
                _ => return Err(Malformed::Label),
            }
        }
    }
}

/// Reads the question name: plain labels only, at most 255 bytes. Returns its wire bytes.
fn read_qname<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Malformed> {
    let start = r.pos;
    loop {
        let l = r.u8().ok_or(Malformed::Truncated)?;
        match l & 0xc0 {
            0x00 if l == 0 => break,
            0x00 => {
                r.take(usize::from(l)).ok_or(Malformed::Truncated)?;
            }
            0xc0 => return Err(Malformed::Compression),
            _ => return Err(Malformed::Label),
        }
        if r.pos - start > MAX_NAME {
            return Err(Malformed::NameTooLong);
        }
    }
    if r.pos - start > MAX_NAME {
        return Err(Malformed::NameTooLong);
    }
    r.buf.get(start..r.pos).ok_or(Malformed::Truncated)
}

/// Recognises a whole query. Trailing bytes after the counted records are ignored, as most
/// servers do (some middleboxes pad).
pub fn parse_query(packet: &[u8]) -> Result<Query<'_>, ParseError> {
    let mut r = Reader {
        buf: packet,
        pos: 0,
    };
    let (Some(id), Some(flags)) = (r.u16(), r.u16()) else {
        return Err(ParseError::Drop(Malformed::Short));
    };
    let (Some(qd), Some(an), Some(ns), Some(ar)) = (r.u16(), r.u16(), r.u16(), r.u16()) else {
        return Err(ParseError::Drop(Malformed::Short));
    };
    if flags & 0x8000 != 0 {
        return Err(ParseError::Drop(Malformed::Response));
    }
    let formerr = |reason| ParseError::FormErr { reason, id, flags };
    if qd != 1 {
        return Err(formerr(Malformed::QuestionCount));
    }
    let qname = read_qname(&mut r).map_err(formerr)?;
    let (Some(qtype), Some(qclass)) = (r.u16(), r.u16()) else {
        return Err(formerr(Malformed::Truncated));
    };
    // Records in the answer and authority sections of a query carry nothing for us (an
    // UPDATE's prerequisites would, but UPDATE is NOTIMP); skip them to reach the OPT.
    let others = u32::from(an) + u32::from(ns);
    if others + u32::from(ar) > u32::from(MAX_ADDITIONAL) {
        return Err(formerr(Malformed::Truncated));
    }
    let mut edns = None;
    for i in 0..others + u32::from(ar) {
        let owner_root = r.buf.get(r.pos) == Some(&0);
        r.skip_name().map_err(formerr)?;
        let (Some(t), Some(c), Some(ttl), Some(len)) = (r.u16(), r.u16(), r.u32(), r.u16()) else {
            return Err(formerr(Malformed::Truncated));
        };
        r.take(usize::from(len))
            .ok_or(formerr(Malformed::Truncated))?;
        if t == rtype::OPT {
            // RFC 6891 §6.1.1: one OPT, in the additional section, owned by the root.
            if i < others || !owner_root || edns.is_some() {
                return Err(formerr(Malformed::Opt));
            }
            edns = Some(Edns {
                udp_payload: c,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
    }
    Ok(Query {
        id,
        flags,
        qname,
        qtype,
        qclass,
        edns,
    })
}

/// Lower-cases a wire name into `out` (RFC 4343: ASCII case-insensitive); returns its length.
/// `name` comes from [`parse_query`], so it fits in 255 bytes.
pub fn lower_name(name: &[u8], out: &mut [u8; MAX_NAME]) -> usize {
    let n = name.len().min(MAX_NAME);
    for (o, b) in out.iter_mut().zip(&name[..n]) {
        *o = b.to_ascii_lowercase();
    }
    n
}

/// Where `apex` starts inside `name` (both lower-case wire names) when `name` is the apex or
/// below it, on a label boundary.
pub fn apex_offset(name: &[u8], apex: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    loop {
        let rest = name.get(pos..)?;
        if rest == apex {
            return Some(pos);
        }
        let l = usize::from(*rest.first()?);
        if l == 0 {
            return None;
        }
        pos += l + 1;
    }
}

/// A name in text form (`rdgw.example.com.`) in wire form, lower case. The caller passes names
/// validated by `config`; a bad label yields `None`.
pub fn name_to_wire(text: &str) -> Option<Vec<u8>> {
    let bare = text.strip_suffix('.').unwrap_or(text);
    let mut out = Vec::with_capacity(bare.len() + 2);
    if !bare.is_empty() {
        for label in bare.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Flags of an answer: QR, the query's opcode, RD and CD (RFC 6840 §5.9) echoed, AA when we
/// speak for the zone, TC when cut, and the low four bits of the rcode.
pub fn answer_flags(query_flags: u16, aa: bool, tc: bool, rcode: Rcode) -> u16 {
    let echoed = query_flags & (0x7800 | 0x0100 | 0x0010);
    0x8000
        | echoed
        | if aa { 0x0400 } else { 0 }
        | if tc { 0x0200 } else { 0 }
        | (rcode.value() & 0xf)
}

/// Appends to a reused buffer; counts live in the header and are patched as sections grow.
pub struct Writer<'b> {
    pub buf: &'b mut Vec<u8>,
}

impl Writer<'_> {
    /// Starts a message: header with the given counts zeroed except QDCOUNT.
    pub fn header(&mut self, id: u16, flags: u16, qdcount: u16) {
        self.buf.clear();
        self.buf.extend_from_slice(&id.to_be_bytes());
        self.buf.extend_from_slice(&flags.to_be_bytes());
        self.buf.extend_from_slice(&qdcount.to_be_bytes());
        self.buf.extend_from_slice(&[0; 6]);
    }

    pub fn question(&mut self, qname: &[u8], qtype: u16, qclass: u16) {
        self.buf.extend_from_slice(qname);
        self.buf.extend_from_slice(&qtype.to_be_bytes());
        self.buf.extend_from_slice(&qclass.to_be_bytes());
    }

    /// Adds `n` to the count at header offset `at` (6: answer, 8: authority, 10: additional).
    pub fn add_count(&mut self, at: usize, n: u16) {
        if let Some(b) = self.buf.get_mut(at..at + 2) {
            let v = u16::from_be_bytes([b[0], b[1]]).saturating_add(n);
            b.copy_from_slice(&v.to_be_bytes());
        }
    }

    /// A compression pointer to `offset` (RFC 1035 §4.1.4: 14 bits).
    pub fn pointer(&mut self, offset: usize) {
        let p = 0xc000 | (offset as u16 & 0x3fff);
        self.buf.extend_from_slice(&p.to_be_bytes());
    }

    /// The OPT record of an answer to an EDNS query (RFC 6891 §6.1.2).
    pub fn opt(&mut self, rcode: Rcode, dnssec_ok: bool) {
        let ext = (rcode.value() >> 4) as u8;
        self.buf.push(0);
        self.buf.extend_from_slice(&rtype::OPT.to_be_bytes());
        self.buf.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
        self.buf
            .extend_from_slice(&[ext, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
        self.buf.extend_from_slice(&0u16.to_be_bytes());
        self.add_count(10, 1);
    }

    pub fn set_flags(&mut self, flags: u16) {
        if let Some(b) = self.buf.get_mut(2..4) {
            b.copy_from_slice(&flags.to_be_bytes());
        }
    }
}

/// The size of an OPT record.
pub const OPT_LEN: usize = 11;

/// Record data helpers (used when a zone is built, not per query).
pub mod rdata {
    /// `type class ttl rdlength rdata` after an owner name.
    pub fn record(out: &mut Vec<u8>, rtype: u16, ttl: u32, data: &[u8]) {
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&super::class::IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        // Our record data is at most a few hundred bytes (two names and five numbers).
        out.extend_from_slice(&(data.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// SOA data (RFC 1035 §3.3.13), names uncompressed.
    pub fn soa(
        mname: &[u8],
        rname: &[u8],
        serial: u32,
        refresh: u32,
        retry: u32,
        expire: u32,
        minimum: u32,
    ) -> Vec<u8> {
        let mut d = Vec::with_capacity(mname.len() + rname.len() + 20);
        d.extend_from_slice(mname);
        d.extend_from_slice(rname);
        for v in [serial, refresh, retry, expire, minimum] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        d
    }

    /// HINFO (RFC 1035 §3.3.2): two character strings.
    pub fn hinfo(cpu: &str, os: &str) -> Vec<u8> {
        let mut d = Vec::new();
        for s in [cpu, os] {
            let b = &s.as_bytes()[..s.len().min(255)];
            d.push(b.len() as u8);
            d.extend_from_slice(b);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        b.extend(name_to_wire_case(name.trim_end_matches('.')));
        b.extend(qtype.to_be_bytes());
        b.extend(class::IN.to_be_bytes());
        if let Some(size) = edns {
            b[11] = 1;
            b.extend([0, 0, 41]);
            b.extend(size.to_be_bytes());
            b.extend([0, 0, 0x80, 0, 0, 0]);
        }
        b
    }

    #[test]
    fn reads_a_plain_query() {
        let p = query("RDGW.Example.com.", rtype::AAAA, None);
        let q = parse_query(&p).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qtype, rtype::AAAA);
        assert_eq!(
            q.qname,
            &name_to_wire_case("RDGW.Example.com")[..],
            "case kept"
        );
        assert_eq!(q.udp_limit(), 512);
        assert_eq!(q.opcode(), 0);
    }

    fn name_to_wire_case(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for l in s.split('.') {
            out.push(l.len() as u8);
            out.extend(l.bytes());
        }
        out.push(0);
        out
    }

    #[test]
    fn reads_edns() {
        let p = query("a.b.", rtype::A, Some(4096));
        let q = parse_query(&p).unwrap();
        let e = q.edns.unwrap();
        assert_eq!((e.udp_payload, e.version, e.dnssec_ok), (4096, 0, true));
        assert_eq!(q.udp_limit(), usize::from(OUR_UDP_PAYLOAD));
        let p = query("a.b.", rtype::A, Some(100));
        assert_eq!(parse_query(&p).unwrap().udp_limit(), 512);
    }

    #[test]
    fn refuses_bad_packets() {
        assert_eq!(parse_query(&[]), Err(ParseError::Drop(Malformed::Short)));
        assert_eq!(
            parse_query(&[0; 11]),
            Err(ParseError::Drop(Malformed::Short))
        );
        let mut p = query("a.b.", rtype::A, None);
        p[2] |= 0x80;
        assert_eq!(parse_query(&p), Err(ParseError::Drop(Malformed::Response)));
        // A pointer back to the question's start: a loop.
        let mut p = vec![
            0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0xc0, 12, 0, 1, 0, 1,
        ];
        assert_eq!(
            parse_query(&p).unwrap_err().reason(),
            Malformed::Compression
        );
        p.truncate(13);
        assert_eq!(parse_query(&p).unwrap_err().reason(), Malformed::Truncated);
        let p = vec![0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(
            parse_query(&p).unwrap_err().reason(),
            Malformed::QuestionCount
        );
        let p = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x41, 0, 0, 1, 0, 1];
        assert_eq!(parse_query(&p).unwrap_err().reason(), Malformed::Label);
        let mut long = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            long.push(63);
            long.extend([b'x'; 63]);
        }
        long.extend([0, 0, 1, 0, 1]);
        assert_eq!(
            parse_query(&long).unwrap_err().reason(),
            Malformed::NameTooLong
        );
        // Two OPT records.
        let mut p = query("a.b.", rtype::A, Some(1232));
        p[11] = 2;
        p.extend([0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_query(&p).unwrap_err().reason(), Malformed::Opt);
        // An ARCOUNT that lies.
        let mut p = query("a.b.", rtype::A, None);
        p[11] = 3;
        assert_eq!(parse_query(&p).unwrap_err().reason(), Malformed::Truncated);
    }

    #[test]
    fn formerr_keeps_id_and_opcode() {
        let p = vec![0xab, 0xcd, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
        let ParseError::FormErr { id, flags, .. } = parse_query(&p).unwrap_err() else {
            panic!("expected FORMERR")
        };
        assert_eq!((id, flags), (0xabcd, 0x0100));
        assert_eq!(answer_flags(flags, false, false, Rcode::FormErr), 0x8101);
    }

    #[test]
    fn apex_and_case() {
        let apex = name_to_wire("lab.test.").unwrap();
        let name = name_to_wire("rdgw.lab.test.").unwrap();
        assert_eq!(apex_offset(&name, &apex), Some(5));
        assert_eq!(apex_offset(&apex, &apex), Some(0));
        let other = name_to_wire("rdgw.lab.test.org.").unwrap();
        assert_eq!(apex_offset(&other, &apex), None);
        // "xlab.test." must not match on a non-boundary.
        let x = name_to_wire("xlab.test.").unwrap();
        assert_eq!(apex_offset(&x, &apex), None);
        let mut out = [0u8; MAX_NAME];
        let n = lower_name(&name_to_wire_case("RdGw.LAB.test"), &mut out);
        assert_eq!(&out[..n], &name[..]);
    }

    proptest::proptest! {
        /// Any bytes: an answer or an error, never a panic, and a query that parses names a
        /// question that lies inside the packet.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Ok(q) = parse_query(&bytes) {
                proptest::prop_assert!(q.qname.len() <= MAX_NAME);
                proptest::prop_assert!(bytes.len() >= HEADER_LEN + q.qname.len() + 4);
            }
        }
    }
}
