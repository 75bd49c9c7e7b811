//! A TCP proxy the test controls, in front of a real server: it forwards, refuses (its port
//! closed), or accepts and never answers; switching away from forwarding cuts every
//! connection it carries.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards to the server.
    Forward,
    /// The port is closed: connections are refused.
    Refuse,
    /// Keeps its connections and accepts new ones, and answers nothing.
    Hang,
}

/// A proxy on 127.0.0.1 to `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, watching) = watch::channel(Mode::Forward);
        tokio::spawn(serve(Some(listener), addr, upstream, watching));
        Proxy { addr, mode }
    }

    /// Switches the mode.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) {
    let mut held = Vec::new();
    loop {
        let now = *mode.borrow_and_update();
        if now == Mode::Refuse {
            listener = None;
        } else if listener.is_none() {
            // The same port again (SO_REUSEADDR), as a restarted server would have.
            listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break Some(l),
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            };
        }
        if now != Mode::Hang {
            held.clear();
        }
        let accepted = async {
            match &listener {
                Some(l) => l.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            Some((client, _)) = accepted => match now {
                Mode::Hang => held.push(client),
                _ => {
                    tokio::spawn(forward(client, upstream, mode.clone()));
                }
            },
        }
    }
}

/// Copies both ways until either side closes or the mode leaves `Forward`; under `Hang`
/// the connection stays open, silent, until the mode changes again.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        _ = mode.wait_for(|m| *m != Mode::Forward) => {}
    }
    if *mode.borrow() == Mode::Hang {
        let _ = mode.wait_for(|m| *m != Mode::Hang).await;
    }
}
