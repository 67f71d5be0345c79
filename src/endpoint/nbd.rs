//! TEMPORARY stand-in.
use super::Side;
use crate::config::Config;
use crate::copy::nbdconn::NbdConn;
use crate::copy::worker::LaneParams;
use crate::error::{Error, Result};
use crate::proto::Negotiated;
pub struct NbdEndpoint { pub info: Negotiated }
impl NbdEndpoint {
    pub fn connect_uri(_u: &str, _s: Side, _c: &Config) -> Result<Self> { Err(Error::invalid("NBD not yet")) }
    pub fn spawn(_a: &[String], _s: Side, _c: &Config) -> Result<Self> { Err(Error::invalid("NBD not yet")) }
    pub fn max_connections(&self) -> u32 { 1 }
    pub fn lane_conn(&mut self, _i: usize, _p: &LaneParams) -> Result<NbdConn> { Err(Error::invalid("x")) }
    pub fn disconnect(&mut self) {}
}
