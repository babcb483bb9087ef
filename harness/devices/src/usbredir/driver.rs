//! Serves one usbredir connection over a unix socket, blocking, on two threads: a reader that
//! only moves bytes off the socket, and a core thread that owns the [`Session`] and the device
//! and is the only writer. Other threads steer the link through a [`LinkControl`]: unplug and
//! re-plug on the live link, or close the socket (the two surprise removals of
//! docs/protocols.md §1.5).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{LinkRequest, ProtocolError, Session, UsbDevice};

/// How often the core thread looks for IN reports the device produced on its own (e.g. after
/// a delayed reply), when no packet arrives.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// Read size: the largest packet QEMU sends to a full-speed HID device is far smaller.
const READ_CHUNK: usize = 64 * 1024;

/// Why a served connection ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The peer closed the socket (QEMU after `device_del`, or QEMU exiting).
    PeerClosed,
    /// The peer's traffic broke the protocol; we closed the socket.
    Protocol(ProtocolError),
    Io(io::Error),
    /// We closed the socket: [`LinkControl::close`] or a device's [`LinkRequest::Close`].
    LocalClose,
}

enum Input {
    Data(Vec<u8>),
    Eof,
    Error(io::Error),
    Unplug,
    Replug,
    Close,
}

/// Steers a served link from any thread. Requests to a link that has ended are ignored.
#[derive(Clone)]
pub struct LinkControl {
    tx: mpsc::Sender<Input>,
}

impl LinkControl {
    /// Surprise removal on the live link: `device_disconnect`.
    pub fn unplug(&self) {
        let _ = self.tx.send(Input::Unplug);
    }

    /// Announces the device again after [`LinkControl::unplug`] (once QEMU has acknowledged).
    pub fn replug(&self) {
        let _ = self.tx.send(Input::Replug);
    }

    /// Surprise removal by closing the socket.
    pub fn close(&self) {
        let _ = self.tx.send(Input::Close);
    }
}

/// One connection being served.
pub struct Link {
    control: LinkControl,
    core: JoinHandle<SessionEnd>,
}

impl Link {
    pub fn control(&self) -> LinkControl {
        self.control.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.core.is_finished()
    }

    /// Waits until the connection has ended and says why.
    pub fn join(self) -> SessionEnd {
        self.core.join().unwrap_or_else(|_| SessionEnd::Io(io::Error::other("the usbredir core thread panicked")))
    }
}

/// Starts serving `device` on `stream` (already connected); our hello goes out at once.
pub fn serve(stream: UnixStream, device: Box<dyn UsbDevice + Send>) -> io::Result<Link> {
    let (tx, rx) = mpsc::channel();
    let mut read_half = stream.try_clone()?;
    let reader_tx = tx.clone();
    let reader = thread::Builder::new().name("usbredir-read".into()).spawn(move || {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let input = match read_half.read(&mut buf) {
                Ok(0) => Input::Eof,
                Err(e) if peer_gone(&e) => Input::Eof,
                Ok(n) => Input::Data(buf.get(..n).unwrap_or_default().to_vec()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Input::Error(e),
            };
            let last = !matches!(input, Input::Data(_));
            if reader_tx.send(input).is_err() || last {
                return;
            }
        }
    })?;
    let core = thread::Builder::new().name("usbredir-core".into()).spawn(move || {
        let mut stream = stream;
        let end = run(&mut stream, rx, device);
        match &end {
            SessionEnd::Protocol(e) => tracing::warn!("usbredir protocol error, closing the link: {e}"),
            SessionEnd::Io(e) => tracing::warn!("usbredir link I/O error: {e}"),
            SessionEnd::PeerClosed | SessionEnd::LocalClose => tracing::debug!(?end, "usbredir link ended"),
        }
        // Unblocks the reader, which then sees end of file.
        let _ = stream.shutdown(Shutdown::Both);
        let _ = reader.join();
        end
    })?;
    Ok(Link { control: LinkControl { tx }, core })
}

fn run(stream: &mut UnixStream, rx: mpsc::Receiver<Input>, mut device: Box<dyn UsbDevice + Send>) -> SessionEnd {
    let mut session = Session::new(device.info());
    loop {
        match flush(stream, &mut session, device.as_ref()) {
            Ok(()) => {}
            Err(e) if peer_gone(&e) => return SessionEnd::PeerClosed,
            Err(e) => return SessionEnd::Io(e),
        }
        let input = match rx.recv_timeout(IDLE_POLL) {
            Ok(input) => input,
            Err(RecvTimeoutError::Timeout) => {
                session.pump(device.as_mut());
                continue;
            }
            // LinkControl and the reader hold senders; all gone means nobody can reach us.
            Err(RecvTimeoutError::Disconnected) => return SessionEnd::PeerClosed,
        };
        match input {
            Input::Data(bytes) => {
                if let Err(e) = session.receive(&bytes, device.as_mut()) {
                    return SessionEnd::Protocol(e);
                }
                match device.link_request() {
                    Some(LinkRequest::Disconnect) => session.disconnect(),
                    // Whatever replies are queued die with the link, as on a real cable pull.
                    Some(LinkRequest::Close) => return SessionEnd::LocalClose,
                    None => {}
                }
            }
            Input::Eof => return SessionEnd::PeerClosed,
            Input::Error(e) => return SessionEnd::Io(e),
            Input::Unplug => session.disconnect(),
            Input::Replug => session.connect(),
            Input::Close => return SessionEnd::LocalClose,
        }
    }
}

/// A peer that closes with our packets still unread resets the connection (QEMU on
/// `device_del`): that is still the peer closing, not a fault of the link.
fn peer_gone(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

fn flush(stream: &mut UnixStream, session: &mut Session, device: &dyn UsbDevice) -> io::Result<()> {
    let mut delayed = false;
    while let Some(packet) = session.poll_transmit() {
        if !delayed {
            delayed = true;
            let delay = device.reply_delay();
            if !delay.is_zero() {
                thread::sleep(delay);
            }
        }
        stream.write_all(&packet)?;
    }
    Ok(())
}
