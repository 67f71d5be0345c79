//! TEMPORARY stand-in until the protocol core lands.
pub mod uri {
    pub fn is_nbd_uri(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbds://") || s.starts_with("nbd+") || s.starts_with("nbds+")
    }
}
#[derive(Debug, Clone, Copy)]
pub struct BlockSize { pub min: u32, pub preferred: u32, pub max_payload: u32 }
#[derive(Debug, Clone)]
pub struct Negotiated { pub size: u64, pub block_size: BlockSize }
impl Negotiated { pub fn read_only(&self) -> bool { false } }
