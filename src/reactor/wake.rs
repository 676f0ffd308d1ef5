//! Wakers that put a task id on the loop's ready queue, once until it is polled again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

/// A task: a connection (`call == 0`) or one call on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskId {
    pub connection: u64,
    pub call: u64,
}

impl TaskId {
    pub fn connection(connection: u64) -> Self {
        TaskId { connection, call: 0 }
    }
    pub fn is_connection(self) -> bool {
        self.call == 0
    }
}

/// The ready queue. The `Mutex` exists only because `Waker` must be `Send + Sync`; the process has one thread,
/// so it is never contended, and it guards nothing but this list of ids.
#[derive(Default)]
pub struct WakeQueue {
    ready: Mutex<Vec<Arc<TaskWaker>>>,
}

pub struct TaskWaker {
    id: TaskId,
    queued: AtomicBool,
    queue: Arc<WakeQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.ready.lock().expect("never poisoned: one thread").push(Arc::clone(self));
        }
    }
}

impl WakeQueue {
    /// A waker for `id`.
    pub fn waker(self: &Arc<Self>, id: TaskId) -> Waker {
        Waker::from(Arc::new(TaskWaker { id, queued: AtomicBool::new(false), queue: Arc::clone(self) }))
    }

    pub fn is_empty(&self) -> bool {
        self.ready.lock().expect("never poisoned: one thread").is_empty()
    }

    /// Takes every queued task id; each can be queued again from the moment it is taken.
    pub fn take(&self) -> Vec<TaskId> {
        let ready = std::mem::take(&mut *self.ready.lock().expect("never poisoned: one thread"));
        ready
            .into_iter()
            .map(|waker| {
                waker.queued.store(false, Ordering::Release);
                waker.id
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_queued_once_until_taken() {
        let queue = Arc::new(WakeQueue::default());
        let waker = queue.waker(TaskId { connection: 3, call: 5 });
        waker.wake_by_ref();
        waker.wake_by_ref();
        assert_eq!(queue.take(), vec![TaskId { connection: 3, call: 5 }]);
        assert!(queue.take().is_empty());
        waker.wake_by_ref();
        assert_eq!(queue.take().len(), 1);
    }
}
