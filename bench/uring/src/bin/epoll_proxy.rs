//! The minimal HTTP/1.1 proxy loop on tokio (epoll), one thread: each client connection gets
//! one upstream connection; each request is read whole, written to the upstream, and its
//! answer read whole and written back, byte for byte.

use portico_uring_experiment::{args, message_end};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUF: usize = 64 * 1024;

/// Reads into `buf` until it holds a whole message; its length, or `None` at end of stream.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>, response: bool) -> Option<usize> {
    loop {
        if let Some(end) = message_end(buf, response).ok()? {
            return Some(end);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(BUF);
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn serve(mut client: TcpStream, upstream: String) -> Option<()> {
    let mut server = TcpStream::connect(upstream).await.ok()?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut inbound, mut outbound) = (Vec::with_capacity(BUF), Vec::with_capacity(BUF));
    loop {
        let end = read_message(&mut client, &mut inbound, false).await?;
        server.write_all(&inbound[..end]).await.ok()?;
        inbound.drain(..end);
        let end = read_message(&mut server, &mut outbound, true).await?;
        client.write_all(&outbound[..end]).await.ok()?;
        outbound.drain(..end);
    }
}

fn main() {
    let (listen, upstream) = args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen)
            .await
            .expect("the listen address");
        println!("listening on {}", listener.local_addr().expect("bound"));
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(client, upstream.clone()));
        }
    });
}
