//! UDP peers: an echo upstream that records where each datagram came from, a small DNS
//! server answering A queries, and the client side of both.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Above this, the echo answers the payload alone (an answer must fit one datagram too).
const LARGE: usize = 60_000;

/// A UDP upstream on `IP:0`; answers `NAME PAYLOAD` to each datagram, from its own socket.
pub struct UdpEcho {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UdpEcho {
    /// An echo on 127.0.0.1.
    pub async fn start(name: &str) -> Self {
        Self::start_on("127.0.0.1", name).await
    }

    /// An echo on `ip`.
    pub async fn start_on(ip: &str, name: &str) -> Self {
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        Self::serve(socket, name)
    }

    /// An echo on an already-bound socket.
    pub fn serve(socket: UdpSocket, name: &str) -> Self {
        let addr = socket.local_addr().unwrap();
        let sources: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let seen = Arc::clone(&sources);
        let prefix = format!("{name} ").into_bytes();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                seen.lock().unwrap().push(from);
                let answer = if n > LARGE {
                    buf[..n].to_vec()
                } else {
                    [&prefix[..], &buf[..n]].concat()
                };
                let _ = socket.send_to(&answer, from).await;
            }
        });
        UdpEcho {
            addr,
            sources,
            task,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The source address of every datagram received, in order.
    pub fn sources(&self) -> Vec<SocketAddr> {
        self.sources.lock().unwrap().clone()
    }
}

/// A client socket on 127.0.0.1:0 connected to `to`.
pub async fn client(to: &str) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(to).await.unwrap();
    socket
}

/// Sends `payload` and waits (up to 5 s) for one answer.
pub async fn ask(socket: &UdpSocket, payload: &[u8]) -> Vec<u8> {
    socket.send(payload).await.unwrap();
    answer(socket, Duration::from_secs(5))
        .await
        .expect("an answer within 5 s")
}

/// The next datagram within `wait`, if any.
pub async fn answer(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// A DNS server on 127.0.0.1:0 answering A queries for `records` (RFC 1035 §4.1); other
/// names get NXDOMAIN.
pub struct DnsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsServer {
    pub async fn start(records: &[(&str, Ipv4Addr)]) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Vec<(String, Ipv4Addr)> =
            records.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(reply) = dns_answer(&buf[..n], &records) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        DnsServer { addr, task }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// A standard query for `name`'s A record, recursion desired.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A parsed answer: transaction id, RCODE, and the A record's address when there is one.
pub fn dns_parse(answer: &[u8]) -> (u16, u8, Option<Ipv4Addr>) {
    let id = u16::from_be_bytes([answer[0], answer[1]]);
    let rcode = answer[3] & 0x0f;
    let count = u16::from_be_bytes([answer[6], answer[7]]);
    let addr = (count == 1).then(|| {
        let a = &answer[answer.len() - 4..];
        Ipv4Addr::new(a[0], a[1], a[2], a[3])
    });
    (id, rcode, addr)
}

fn dns_answer(query: &[u8], records: &[(String, Ipv4Addr)]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels up to the root, then QTYPE and QCLASS.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(
            std::str::from_utf8(query.get(at..at + len)?)
                .ok()?
                .to_ascii_lowercase(),
        );
        at += len;
    }
    let question = query.get(12..at + 4)?;
    let name = labels.join(".");
    let found = records.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
    let mut reply = Vec::new();
    reply.extend_from_slice(&query[..2]);
    reply.extend_from_slice(&[0x81, if found.is_some() { 0x80 } else { 0x83 }]);
    reply.extend_from_slice(&[0, 1, 0, u8::from(found.is_some()), 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if let Some(addr) = found {
        // A pointer to the question's name, TYPE A, CLASS IN, TTL 60, 4 bytes.
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&addr.octets());
    }
    Some(reply)
}

/// The value of the series `series` (name and labels as printed) in a metrics text; 0 when
/// absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}
