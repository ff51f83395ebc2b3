//! A child process a test starts is stopped by construction: [`KilledOnDrop`] kills and reaps
//! it when dropped, so a failed assertion before the test's own stop leaves no process running
//! (nor holding the test's output pipes open).

use std::{
    ops::{Deref, DerefMut},
    process::Child,
};

/// A [`Child`] that is killed (SIGKILL) and waited for when dropped, unless it exited already.
/// Derefs to the `Child`, for the test's own signals and waits.
#[derive(Debug)]
pub struct KilledOnDrop(pub Child);

impl Deref for KilledOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KilledOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::KilledOnDrop;

    #[test]
    fn a_dropped_child_is_killed_and_reaped() {
        let child = KilledOnDrop(Command::new("sleep").arg("60").spawn().expect("sleep"));
        let pid = child.id();
        drop(child);
        // Reaped: no such process any more (not even a zombie).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
