// SPDX-License-Identifier: LGPL-2.1-or-later
// Copyright (C) 2026 The nbdcpy authors

//! Lanes' lost NBD connections (`--retries`): reconnecting them, and stalls taken as losses.
//
// A lost connection (see `nbdconn::redial`) is reconnected from the
// event loop once the engine holds nothing of it; the wait and the dial
// run on a helper thread, polled each loop turn, so the worker's other
// lanes go on.  A stall (no I/O for the
// timeout) with retries on is taken as the loss of every connection of
// this worker that has something outstanding.

use super::core::{user_data, Worker, K_DST_NBD, K_SRC_NBD};
use super::lane::{DstIo, Lane, SrcIo};
use crate::error::{Error, Result};
use std::time::Instant;

impl Worker<'_> {
    /// Reconnects the lanes' lost connections whose operations have left
    /// the engine, sending their requests again.
    pub(super) fn redial_lost(&mut self, lanes: &mut [Lane]) -> Result<()> {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let mut again = false;
            if let SrcIo::Nbd(c) = &mut lane.src {
                let base = user_data(i, K_SRC_NBD, 0);
                again |= c.redial_if_lost(&mut self.engine, base, self.shared)?;
            }
            if let DstIo::Nbd(c) = &mut lane.dst {
                let base = user_data(i, K_DST_NBD, 0);
                again |= c.redial_if_lost(&mut self.engine, base, self.shared)?;
            }
            if again {
                // Reconnecting is not a stall.
                self.last_progress = Instant::now();
            }
        }
        Ok(())
    }

    /// The stall timeout `e` fired: with retries on every connection
    /// that has requests outstanding, they are all taken as lost (and
    /// reconnected); otherwise `e` stands.
    pub(super) fn stall_as_loss(&mut self, lanes: &mut [Lane], e: Error) -> Result<()> {
        let mut stalled = Vec::new();
        for lane in lanes.iter_mut() {
            if let SrcIo::Nbd(c) = &mut lane.src {
                stalled.push(c);
            }
            if let DstIo::Nbd(c) = &mut lane.dst {
                stalled.push(c);
            }
        }
        stalled.retain(|c| c.has_outstanding());
        if stalled.is_empty() || !stalled.iter().all(|c| c.can_retry()) {
            return Err(e);
        }
        for c in stalled {
            let msg = format!("{}: {}", c.name, e.msg);
            c.lose(Error::new(e.errno, msg).on(c.side));
        }
        self.last_progress = Instant::now();
        Ok(())
    }
}
