//! The same minimal HTTP/1.1 proxy loop as epoll_proxy, on tokio-uring (io_uring): reads and
//! writes are submitted to the kernel's ring with owned buffers instead of readiness + syscall.

use portico_uring_experiment::{args, message_end};
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream};

const BUF: usize = 64 * 1024;

/// Reads into `buf` until it holds a whole message; its length and the buffer, or `None` at
/// end of stream.
async fn read_message(
    stream: &TcpStream,
    mut buf: Vec<u8>,
    response: bool,
) -> Option<(usize, Vec<u8>)> {
    loop {
        if let Some(end) = message_end(&buf, response).ok()? {
            return Some((end, buf));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(BUF);
        }
        let len = buf.len();
        let (read, slice) = stream.read(buf.slice(len..)).await;
        buf = slice.into_inner();
        if read.ok()? == 0 {
            return None;
        }
    }
}

/// Writes `buf[..end]`, then keeps what follows at the front.
async fn write_message(stream: &TcpStream, buf: Vec<u8>, end: usize) -> Option<Vec<u8>> {
    let (written, slice) = stream.write_all(buf.slice(..end)).await;
    written.ok()?;
    let mut buf = slice.into_inner();
    buf.drain(..end);
    Some(buf)
}

async fn serve(client: TcpStream, upstream: std::net::SocketAddr) -> Option<()> {
    let server = TcpStream::connect(upstream).await.ok()?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut inbound, mut outbound) = (Vec::with_capacity(BUF), Vec::with_capacity(BUF));
    loop {
        let (end, buf) = read_message(&client, inbound, false).await?;
        inbound = write_message(&server, buf, end).await?;
        let (end, buf) = read_message(&server, outbound, true).await?;
        outbound = write_message(&client, buf, end).await?;
    }
}

fn main() {
    let (listen, upstream) = args();
    let upstream: std::net::SocketAddr = upstream.parse().expect("the upstream as IP:PORT");
    tokio_uring::start(async move {
        let listener = TcpListener::bind(listen.parse().expect("the listen address as IP:PORT"))
            .expect("bound");
        println!("listening on {}", listener.local_addr().expect("bound"));
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio_uring::spawn(serve(client, upstream));
        }
    });
}
