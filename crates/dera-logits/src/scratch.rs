//! Per-thread reusable buffers so hot paths do not allocate on every call.

use std::cell::RefCell;
use std::thread::LocalKey;

thread_local! {
    pub(crate) static TOKENS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    pub(crate) static VALUES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    pub(crate) static RANKED: RefCell<Vec<Ranked>> = const { RefCell::new(Vec::new()) };
}

/// A logit together with its index and unnormalised probability weight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ranked {
    pub value: f32,
    pub index: u32,
    pub weight: f64,
}

/// Runs `f` with a cleared thread-local buffer (or a fresh one if it is already borrowed).
pub(crate) fn with<T: 'static, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            f(&mut buf)
        }
        Err(_) => f(&mut Vec::new()),
    })
}
