//! The input of a set protocol: a list of byte strings (already normalized and encoded keys).

/// A random-access list of items. Implemented for slices of anything byte-like; the engine
/// implements it for its compact key arena so a million keys need no million allocations.
pub trait Items: Sync {
    fn len(&self) -> usize;
    fn get(&self, index: usize) -> &[u8];
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: AsRef<[u8]> + Sync> Items for [T] {
    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn get(&self, index: usize) -> &[u8] {
        self[index].as_ref()
    }
}

impl<T: AsRef<[u8]> + Sync> Items for Vec<T> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn get(&self, index: usize) -> &[u8] {
        self[index].as_ref()
    }
}
