//! DNS checks: one query over UDP to the Monitor's server (never the system resolver), retried
//! over TCP when the answer is truncated. Messages are encoded and decoded by hickory-proto.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a DNS server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `NOERROR`, `NXDOMAIN`, ...
    pub rcode: String,
    /// Each answer's data as text (addresses, names without the final dot, TXT strings).
    pub records: Vec<String>,
}

/// Gatus's names for response codes.
pub fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("RCODE{other}"),
    }
}

/// Parses a record type name (`A`, `AAAA`, `MX`, ...).
pub fn record_type(name: &str) -> Result<RecordType, String> {
    name.to_ascii_uppercase()
        .parse::<RecordType>()
        .map_err(|_| format!("unknown DNS record type '{name}'"))
}

/// Parses a query name.
pub fn name(text: &str) -> Result<Name, String> {
    Name::from_ascii(text).map_err(|e| format!("invalid DNS name '{text}': {e}"))
}

/// Parses `ip` or `ip:port` (port 53 by default).
pub fn server(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("DNS server '{text}' is not an IP address with an optional port"))
}

/// Sends one query and reads the answer, within `timeout`.
pub async fn query(
    server: SocketAddr,
    name: &Name,
    record_type: RecordType,
    timeout: Duration,
) -> Result<Answer, String> {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), record_type));
    let id = message.metadata.id;
    let bytes = message
        .to_vec()
        .map_err(|e| format!("encoding the query: {e}"))?;
    let exchange = async {
        let bind: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| format!("opening a UDP socket: {e}"))?;
        socket
            .connect(server)
            .await
            .map_err(|e| format!("DNS server {server}: {e}"))?;
        socket
            .send(&bytes)
            .await
            .map_err(|e| format!("DNS server {server}: {e}"))?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .await
                .map_err(|e| format!("DNS server {server}: {e}"))?;
            // Another datagram (a late answer to someone else) is not ours: keep waiting.
            match Message::from_vec(&buf[..n]) {
                Ok(answer) if answer.metadata.id == id => break Ok::<_, String>(answer),
                _ => continue,
            }
        }
    };
    let mut answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("DNS server {server} did not answer within {timeout:?}"))??;
    if answer.metadata.truncation {
        answer = tokio::time::timeout(timeout, over_tcp(server, &bytes))
            .await
            .map_err(|_| {
                format!("DNS server {server} did not answer over TCP within {timeout:?}")
            })??;
    }
    let rcode = rcode_name(u16::from(answer.metadata.response_code));
    let records = answer
        .answers
        .iter()
        .filter(|r| r.record_type() == record_type)
        .map(|r| text_of(&r.data))
        .collect();
    Ok(Answer { rcode, records })
}

async fn over_tcp(server: SocketAddr, query: &[u8]) -> Result<Message, String> {
    let err = |e: std::io::Error| format!("DNS server {server} over TCP: {e}");
    let mut stream = tokio::net::TcpStream::connect(server).await.map_err(err)?;
    let len = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
    stream.write_all(&len.to_be_bytes()).await.map_err(err)?;
    stream.write_all(query).await.map_err(err)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(err)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.map_err(err)?;
    Message::from_vec(&buf).map_err(|e| format!("DNS server {server}: bad answer: {e}"))
}

/// An answer's data as users write expected answers.
fn text_of(data: &RData) -> String {
    match data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .collect::<Vec<_>>()
            .join(""),
        other => other.to_string().trim_end_matches('.').to_string(),
    }
}
