//! One blocking netlink request/reply exchange, for any message family:
//! rtnetlink for sluice-cni's links, routes and neighbours, generic netlink
//! for the IPVS dataplane. A short-lived plugin or a reconcile loop does a
//! handful of requests; a blocking socket costs no runtime and no thread,
//! and it stays bound to the namespace it was opened in.

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// A netlink failure: the kernel's errno for a request, or the transport.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink: {0}")]
    Transport(String),
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            Self::Transport(_) => None,
        }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

/// A connected netlink socket of one protocol, in the calling thread's netns.
pub struct Conn {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(protocol: isize) -> Result<Self, NlError> {
        let mut socket = Socket::new(protocol).map_err(|e| NlError::Transport(format!("socket: {e}")))?;
        socket.bind_auto().map_err(|e| NlError::Transport(format!("bind: {e}")))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| NlError::Transport(format!("connect: {e}")))?;
        // Errors carry the kernel's explanation; acks do not echo requests.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        // Received into spare capacity: never zeroed, and only the pages a
        // reply fills are touched (a dump datagram is at most 32 KiB).
        Ok(Self { socket, seq: 0, buf: Vec::with_capacity(64 * 1024) })
    }

    /// Sends `msg` and collects the replies until the ack, DONE, or (for a
    /// plain request) the first answer.
    pub fn request<T>(&mut self, op: &str, msg: T, flags: u16) -> Result<Vec<T>, NlError>
    where
        T: NetlinkSerializable + NetlinkDeserializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let out = encode(msg, NLM_F_REQUEST | flags, seq);
        self.socket.send(&out, 0).map_err(|e| NlError::Transport(format!("{op}: send: {e}")))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        // Bounded: even a dump of many thousand entries is far fewer datagrams.
        for _ in 0..1_000_000 {
            self.buf.clear();
            // With MSG_TRUNC the kernel reports a datagram's full length even when it did not fit.
            let n = self
                .socket
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(|e| NlError::Transport(format!("{op}: recv: {e}")))?;
            if n > self.buf.capacity() {
                return Err(NlError::Transport(format!("{op}: reply of {n} bytes does not fit the buffer")));
            }
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<T>::deserialize(&self.buf[off..n])
                    .map_err(|e| NlError::Transport(format!("{op}: decode: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(NlError::Kernel { op: op.to_owned(), source: e.to_io() });
                    }
                    // An ack ends a request; inside a dump only DONE does.
                    NetlinkPayload::Error(_) => {
                        if !dump {
                            return Ok(answers);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => {
                        answers.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(answers);
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(NlError::Transport(format!("{op}: no end of reply")))
    }
}

/// One request datagram.
pub fn encode<T: NetlinkSerializable>(msg: T, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out);
    out
}
