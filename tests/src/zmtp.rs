//! ZeroMQ's wire protocol (ZMTP 3.0) written by hand, for tests that must send what a zeromq
//! library would not: a DEALER's greeting, and messages of any frames.

/// A DEALER's greeting (NULL mechanism, as a client) and its READY command.
pub fn dealer_greeting() -> Vec<u8> {
    let mut out = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    out.extend_from_slice(b"NULL");
    out.resize(64, 0);
    let mut ready = vec![5u8];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&6u32.to_be_bytes());
    ready.extend_from_slice(b"DEALER");
    out.extend_from_slice(&[0x04, ready.len() as u8]);
    out.extend_from_slice(&ready);
    out
}

/// One message of `frames` (all but the last with MORE; long frames with 8-byte sizes).
pub fn message(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let more = u8::from(i + 1 < frames.len());
        if f.len() < 256 {
            out.extend_from_slice(&[more, f.len() as u8]);
        } else {
            out.push(more | 0x02);
            out.extend_from_slice(&(f.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}
