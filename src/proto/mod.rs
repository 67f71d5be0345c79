//! TEMPORARY stand-in until the protocol core lands (not functional).
#![allow(dead_code, unused_variables)]
pub mod uri {
    pub fn is_nbd_uri(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbds://") || s.starts_with("nbd+") || s.starts_with("nbds+")
    }
    pub enum Transport { Tcp { host: String, port: u16 }, Unix { path: String }, Vsock { cid: u32, port: u32 } }
    pub struct NbdUri { pub transport: Transport, pub export_name: String, pub tls: bool }
    pub fn parse(s: &str) -> Result<NbdUri, String> { Err("stub".into()) }
}
pub mod consts {
    pub const NBD_CMD_READ: u16 = 0; pub const NBD_CMD_WRITE: u16 = 1; pub const NBD_CMD_DISC: u16 = 2;
    pub const NBD_CMD_FLUSH: u16 = 3; pub const NBD_CMD_WRITE_ZEROES: u16 = 6; pub const NBD_CMD_FLAG_NO_HOLE: u16 = 2; pub const NBD_CMD_BLOCK_STATUS: u16 = 7; pub const NBD_STATE_ZERO: u32 = 2;
}
pub mod request {
    pub struct Request { pub cmd: u16, pub flags: u16, pub cookie: u64, pub offset: u64, pub length: u64 }
    pub fn header_len(m: super::HeaderMode) -> usize { 28 }
    pub fn encode(m: super::HeaderMode, r: &Request, out: &mut [u8]) -> usize { 28 }
}
pub mod reply {
    #[derive(Debug)]
    pub struct RequestError { pub errno: i32 }
    impl std::fmt::Display for RequestError { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { f.write_str("x") } }
    pub struct Extent { pub offset: u64, pub len: u64, pub flags: u32 }
    pub enum Chunk { BlockStatus { cookie: u64, extents: Vec<Extent> }, None, Data { cookie: u64, offset: u64, payload: std::ops::Range<usize> }, Hole { cookie: u64, offset: u64, len: u64 } }
    pub struct Completion { pub cookie: u64, pub result: Result<(), RequestError> }
    pub enum Parse { Incomplete { need: Option<usize> }, Message { len: usize, chunk: Chunk, done: Option<Completion> } }
    pub struct ReplyParser;
    impl ReplyParser {
        pub fn new(n: &super::Negotiated) -> Self { ReplyParser }
        pub fn register(&mut self, r: &super::request::Request) -> Result<(), String> { Ok(()) }
        pub fn parse(&mut self, b: &[u8]) -> Result<Parse, String> { Err("stub".into()) }
    }
}
pub mod handshake {
    pub struct HandshakeOptions { pub export_name: String, pub extended_headers: bool, pub structured_replies: bool, pub meta_context: Option<String>, pub request_block_size: bool, pub tls: bool }
    pub struct Handshake;
    impl Handshake {
        pub fn new(o: HandshakeOptions) -> Self { Handshake }
        pub fn output(&self) -> &[u8] { &[] }
        pub fn consume_output(&mut self, n: usize) {}
        pub fn feed(&mut self, b: &[u8]) -> Result<usize, String> { Err("stub".into()) }
        pub fn is_done(&self) -> bool { false }
        pub fn result(&self) -> Option<&super::Negotiated> { None }
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode { Simple, Structured, Extended }
#[derive(Debug, Clone, Copy)]
pub struct BlockSize { pub min: u32, pub preferred: u32, pub max_payload: u32 }
#[derive(Debug, Clone)]
pub struct Negotiated { pub size: u64, pub block_size: BlockSize, pub mode: HeaderMode, pub tflags: u16 }
impl Negotiated {
    pub fn read_only(&self) -> bool { false }
    pub fn can_multi_conn(&self) -> bool { false }
    pub fn can_flush(&self) -> bool { false }
    pub fn can_write_zeroes(&self) -> bool { false }
    pub fn can_block_status(&self) -> bool { false }
    pub fn check_request(&self, r: &request::Request) -> Result<(), String> { Ok(()) }
}
