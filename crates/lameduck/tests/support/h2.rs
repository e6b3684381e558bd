//! HTTP/2 by hand, for clients that misbehave on purpose (a flood, a GOAWAY never answered):
//! frames written and read as bytes.

/// The HTTP/2 preface, then an empty SETTINGS frame.
pub const HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Frame types.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// A frame: its header (length, type, flags, stream) and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A `GET path` on `stream`, with no body: one HEADERS frame (HPACK without the dynamic
/// table: `:method GET` and `:scheme http` indexed, `:path` and `:authority t` literal).
pub fn get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b't']);
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
}

/// A frame read back: (type, flags, stream, payload).
pub type Frame = (u8, u8, u32, Vec<u8>);

/// Takes the whole frames at the front of `bytes` off it.
pub fn split_frames(bytes: &mut Vec<u8>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        if at + 9 + len > bytes.len() {
            break;
        }
        let stream = u32::from_be_bytes([
            bytes[at + 5] & 0x7f,
            bytes[at + 6],
            bytes[at + 7],
            bytes[at + 8],
        ]);
        let payload = bytes[at + 9..at + 9 + len].to_vec();
        frames.push((bytes[at + 3], bytes[at + 4], stream, payload));
        at += 9 + len;
    }
    bytes.drain(..at);
    frames
}
