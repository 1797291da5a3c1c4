//! WebSocket frames (RFC 6455 §5) as a server writes and reads them, on
//! the session's own socket. Written: text frames (the header of an
//! event's frame is computed once per event per node, [`FrameHead`], and
//! written with the envelope's shared bytes, no copy), pings, pongs and
//! close frames, never masked. Read: the client's frames, which must be
//! masked, up to a size limit ([`Reader`]), with every rule a server
//! enforces: no reserved bits or opcodes, control frames whole and at most
//! 125 bytes, continuations only inside a fragmented message, text and
//! close reasons in UTF-8.

/// A server frame's header: FIN, the opcode and the payload length (2, 4
/// or 10 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    bytes: [u8; 10],
    len: u8,
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

impl FrameHead {
    /// The header of a final frame with `opcode` and `len` payload bytes.
    pub fn new(opcode: u8, len: usize) -> FrameHead {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let n = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        FrameHead { bytes, len: n }
    }

    /// The header of a text frame of `len` bytes.
    pub fn text(len: usize) -> FrameHead {
        FrameHead::new(OP_TEXT, len)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A whole frame (header and payload) of `opcode`.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let head = FrameHead::new(opcode, payload.len());
    let mut out = Vec::with_capacity(head.as_bytes().len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// A close frame with `code` and `reason` (at most 123 bytes of it).
pub fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &payload)
}

/// One message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
    /// A close frame: its code and reason, if it had a code.
    Close(Option<(u16, String)>),
}

/// Why the client's frames cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// A frame or message over the limit.
    TooBig,
    /// A frame the protocol does not allow.
    Protocol,
}

/// The client's frames as they arrive: bytes read from the socket go into
/// [`Reader::buf`], [`Reader::next`] takes whole frames out. Holds no
/// memory while nothing is half-read.
#[derive(Debug)]
pub struct Reader {
    pub buf: Vec<u8>,
    limit: usize,
    /// A fragmented message being assembled: its opcode and payload.
    partial: Option<(u8, Vec<u8>)>,
}

impl Reader {
    /// Frames and messages over `limit` payload bytes are refused.
    pub fn new(limit: usize) -> Reader {
        Reader {
            buf: Vec::new(),
            limit,
            partial: None,
        }
    }

    /// The next whole message or control frame out of the buffer,
    /// `Ok(None)` if more bytes are needed.
    pub fn take(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some((fin, opcode, payload, used)) = self.frame()? else {
                if self.buf.is_empty() {
                    self.buf = Vec::new();
                }
                return Ok(None);
            };
            self.buf.drain(..used);
            if let Some(incoming) = self.assemble(fin, opcode, payload)? {
                if self.buf.is_empty() {
                    self.buf = Vec::new();
                }
                return Ok(Some(incoming));
            }
        }
    }

    /// Parses one frame at the start of the buffer: FIN, opcode, unmasked
    /// payload and the bytes it took.
    #[allow(clippy::type_complexity)]
    fn frame(&self) -> Result<Option<(bool, u8, Vec<u8>, usize)>, ReadError> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(ReadError::Protocol); // no extension was agreed
        }
        let opcode = b[0] & 0x0F;
        let control = opcode & 0x08 != 0;
        match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(ReadError::Protocol),
        }
        if b[1] & 0x80 == 0 {
            return Err(ReadError::Protocol); // client frames are masked
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 => {
                let Some(n) = b.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([n[0], n[1]])), 4)
            }
            127 => {
                let Some(n) = b.get(2..10) else {
                    return Ok(None);
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(n);
                (u64::from_be_bytes(be), 10)
            }
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Err(ReadError::Protocol);
        }
        if len > self.limit as u64 {
            return Err(ReadError::TooBig);
        }
        let len = len as usize;
        let Some(mask) = b.get(at..at + 4) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        at += 4;
        let Some(data) = b.get(at..at + len) else {
            return Ok(None);
        };
        let payload = data
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4])
            .collect();
        Ok(Some((fin, opcode, payload, at + len)))
    }

    /// A frame into a message (fragments joined) or a control frame.
    fn assemble(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
    ) -> Result<Option<Incoming>, ReadError> {
        let (opcode, payload) = match opcode {
            OP_PING => return Ok(Some(Incoming::Ping(payload))),
            OP_PONG => return Ok(Some(Incoming::Pong)),
            OP_CLOSE => return close_payload(&payload).map(|c| Some(Incoming::Close(c))),
            OP_CONTINUATION => {
                let Some((op, mut data)) = self.partial.take() else {
                    return Err(ReadError::Protocol);
                };
                if data.len() + payload.len() > self.limit {
                    return Err(ReadError::TooBig);
                }
                data.extend_from_slice(&payload);
                if !fin {
                    self.partial = Some((op, data));
                    return Ok(None);
                }
                (op, data)
            }
            _ if self.partial.is_some() => return Err(ReadError::Protocol),
            _ if !fin => {
                self.partial = Some((opcode, payload));
                return Ok(None);
            }
            _ => (opcode, payload),
        };
        if opcode == OP_BINARY {
            return Ok(Some(Incoming::Binary));
        }
        String::from_utf8(payload)
            .map(|text| Some(Incoming::Text(text)))
            .map_err(|_| ReadError::Protocol)
    }
}

/// A close frame's code and reason (none, or a code of two bytes and UTF-8).
fn close_payload(payload: &[u8]) -> Result<Option<(u16, String)>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // Codes a peer may send (RFC 6455 §7.4; 1004-1006 and 1015
            // are reserved, 1016-2999 unassigned).
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            let reason = String::from_utf8(reason.to_vec()).map_err(|_| ReadError::Protocol)?;
            if valid {
                Ok(Some((code, reason)))
            } else {
                Err(ReadError::Protocol)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn read(bytes: &[u8]) -> Result<Vec<Incoming>, ReadError> {
        let mut r = Reader::new(4096);
        let mut got = Vec::new();
        // One byte at a time: every partial state is exercised.
        for b in bytes {
            r.buf.push(*b);
            while let Some(m) = r.take()? {
                got.push(m);
            }
        }
        Ok(got)
    }

    #[test]
    fn heads_use_the_shortest_length() {
        assert_eq!(FrameHead::text(5).as_bytes(), &[0x81, 5]);
        assert_eq!(FrameHead::text(125).as_bytes(), &[0x81, 125]);
        assert_eq!(FrameHead::text(126).as_bytes(), &[0x81, 126, 0, 126]);
        assert_eq!(FrameHead::text(65_535).as_bytes(), &[0x81, 126, 0xff, 0xff]);
        assert_eq!(
            FrameHead::text(65_536).as_bytes(),
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(frame(OP_PING, b""), vec![0x89, 0]);
        assert_eq!(close(1000, "ok"), vec![0x88, 4, 0x03, 0xe8, b'o', b'k']);
        assert_eq!(close(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
    }

    #[test]
    fn frames_and_fragments_are_read() {
        let mut bytes = client(0x81, b"{\"op\":1}");
        bytes.extend(client(0x89, b"hi"));
        bytes.extend(client(0x01, b"ab"));
        bytes.extend(client(0x8A, b""));
        bytes.extend(client(0x00, b"cd"));
        bytes.extend(client(0x80, b"e"));
        bytes.extend(client(0x82, &[0, 1, 2]));
        bytes.extend(client(0x81, &[b'x'; 300]));
        bytes.extend(client(0x88, &[0x0f, 0xa0, b'b', b'y', b'e']));
        let got = read(&bytes).expect("valid frames");
        assert_eq!(
            got,
            vec![
                Incoming::Text("{\"op\":1}".into()),
                Incoming::Ping(b"hi".to_vec()),
                Incoming::Pong,
                Incoming::Text("abcde".into()),
                Incoming::Binary,
                Incoming::Text("x".repeat(300)),
                Incoming::Close(Some((4000, "bye".into()))),
            ]
        );
        assert_eq!(read(&client(0x88, b"")), Ok(vec![Incoming::Close(None)]));
    }

    #[test]
    fn what_a_server_refuses() {
        // Over the limit: one frame, or a message in fragments.
        assert_eq!(read(&client(0x81, &[b'x'; 4097])), Err(ReadError::TooBig));
        let mut two = client(0x01, &[b'x'; 3000]);
        two.extend(client(0x80, &[b'x'; 3000]));
        assert_eq!(read(&two), Err(ReadError::TooBig));
        // A length far over the limit is refused from its header alone.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let mut r = Reader::new(4096);
        r.buf = huge;
        assert_eq!(r.take(), Err(ReadError::TooBig));
        for bad in [
            vec![0x81, 0x02, b'h', b'i'],      // not masked
            client(0xC1, b"x"),                // RSV1
            client(0x83, b"x"),                // reserved opcode
            client(0x09, b"x"),                // fragmented ping
            client(0x89, &[0u8; 126]),         // control frame too long
            client(0x80, b"x"),                // continuation of nothing
            client(0x81, &[0xff, 0xfe]),       // not UTF-8
            client(0x88, &[0x03]),             // close with one byte
            client(0x88, &[0x03, 0xee]),       // close 1006: reserved
            client(0x88, &[0x03, 0xe8, 0xff]), // reason not UTF-8
        ] {
            assert_eq!(read(&bad), Err(ReadError::Protocol), "{bad:02x?}");
        }
        let mut interleaved = client(0x01, b"a");
        interleaved.extend(client(0x81, b"b"));
        assert_eq!(read(&interleaved), Err(ReadError::Protocol));
    }

    #[test]
    fn an_idle_reader_holds_no_buffer() {
        let mut r = Reader::new(4096);
        r.buf.extend(client(0x81, b"hello"));
        assert_eq!(r.take(), Ok(Some(Incoming::Text("hello".into()))));
        assert_eq!(r.buf.capacity(), 0);
    }
}
