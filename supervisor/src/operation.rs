//! One operation at a time: a restart or an upgrade holds an [`OperationGuard`] from the
//! moment it is accepted until it is over; another request meanwhile is refused with
//! [`Busy`], which names the one running.

use std::sync::{Arc, Mutex};

/// What holds the right to change the stack's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// A restart of one daemon (its name).
    Restart(String),
    /// A whole-stack upgrade, from its check to its last hand-over.
    Upgrade,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Operation::Restart(daemon) => write!(f, "a restart of {daemon}"),
            Operation::Upgrade => f.write_str("an upgrade"),
        }
    }
}

/// Another operation runs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("busy: {running} is in progress; try again when it is done")]
pub struct Busy {
    /// The one running.
    pub running: Operation,
}

/// The one slot for a running operation.
#[derive(Debug, Default, Clone)]
pub struct Operations {
    running: Arc<Mutex<Option<Operation>>>,
}

/// The right to run an operation, given up when dropped.
#[derive(Debug)]
pub struct OperationGuard {
    running: Arc<Mutex<Option<Operation>>>,
}

impl Operations {
    /// New operations whose first, `operation`, is already running (an upgrade that an
    /// image of the supervisor continues from the one before: nothing can come first).
    pub fn claimed(operation: Operation) -> (Self, OperationGuard) {
        let operations = Self {
            running: Arc::new(Mutex::new(Some(operation))),
        };
        let guard = OperationGuard {
            running: operations.running.clone(),
        };
        (operations, guard)
    }

    /// Claims the right to run `operation`, unless another runs.
    pub fn begin(&self, operation: Operation) -> Result<OperationGuard, Busy> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(other) = &*running {
            return Err(Busy {
                running: other.clone(),
            });
        }
        *running = Some(operation);
        Ok(OperationGuard {
            running: self.running.clone(),
        })
    }
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_and_free_again_once_dropped() {
        let operations = Operations::default();
        let guard = operations
            .begin(Operation::Restart("queued".into()))
            .unwrap();
        let busy = operations.begin(Operation::Upgrade).unwrap_err();
        assert_eq!(
            busy.to_string(),
            "busy: a restart of queued is in progress; try again when it is done"
        );
        drop(guard);
        assert!(operations.begin(Operation::Upgrade).is_ok());
    }

    #[test]
    fn claimed_from_the_start() {
        let (operations, guard) = Operations::claimed(Operation::Upgrade);
        let busy = operations
            .begin(Operation::Restart("dnsd".into()))
            .unwrap_err();
        assert_eq!(busy.running, Operation::Upgrade);
        drop(guard);
        assert!(operations.begin(Operation::Upgrade).is_ok());
    }
}
