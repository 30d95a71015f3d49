//! SIGINT interrupts the running cell, like an interrupt_request (clients with interrupt_mode "signal", or a
//! person pressing Ctrl-C where the kernel was started by hand). The kernel keeps running either way.

use std::sync::Mutex;

use crate::interpreter::Interrupter;
use crate::publish::log;

static TARGET: Mutex<Option<Interrupter>> = Mutex::new(None);

/// Routes SIGINT to `interrupt` (the handler is installed once per process; the latest target wins).
pub fn route_to(interrupt: Interrupter) {
    let first = TARGET.lock().map(|mut t| t.replace(interrupt).is_none()).unwrap_or(false);
    if first {
        let installed = ctrlc::set_handler(|| {
            log("SIGINT: interrupting the running cell");
            if let Some(f) = TARGET.lock().ok().and_then(|t| t.clone()) {
                f();
            }
        });
        if let Err(e) = installed {
            log(&format!("cannot catch SIGINT ({e}); interrupt_request still works"));
        }
    }
}
