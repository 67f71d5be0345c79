//! TEMPORARY stand-in.
use crate::error::{Error, Result};
use crate::ring::Ring;
pub enum RecvEvent {
    Data { slot: u32, offset: u64, ptr: *mut u8, len: u32, room: usize, block: u32 },
    Hole { slot: u32, offset: u64, len: u32 },
    ReadDone { slot: u32 },
    WriteDone { slot: u32, len: u32, zero: bool },
    Flushed,
}
pub struct NbdConn { pub name: String }
impl NbdConn {
    pub fn start(&mut self, _r: &mut Ring, _u: u64) -> Result<()> { Ok(()) }
    pub fn kick(&mut self, _r: &mut Ring, _u: u64) -> Result<()> { Ok(()) }
    pub fn can_issue(&self) -> bool { true }
    pub fn queue_read(&mut self, _s: u32, _o: u64, _l: u64) -> Result<()> { Err(Error::invalid("x")) }
    pub fn queue_write(&mut self, _s: u32, _o: u64, _p: *mut u8, _l: u32, _r: usize, _b: Option<(u32, ())>) -> Result<()> { Err(Error::invalid("x")) }
    pub fn queue_zero(&mut self, _s: u32, _o: u64, _l: u32) -> Result<()> { Err(Error::invalid("x")) }
    pub fn queue_flush(&mut self) -> Result<()> { Ok(()) }
    pub fn release(&mut self, _b: u32) {}
    pub fn pool_handle(&self) {}
    #[allow(clippy::too_many_arguments)]
    pub fn complete(&mut self, _r: &mut Ring, _u: u64, _i: u64, _res: i32, _f: u32, _e: &mut Vec<RecvEvent>) -> Result<()> { Ok(()) }
}
