//! Typed slabs and index-based intrusive doubly-linked lists: the Rust shape
//! of Postfix's `QMGR_LIST_*` macros (`qmgr/qmgr.h`). Items live in a
//! [`Slab`] under a typed key ([`Key`]); each list kind keeps its links in
//! its own [`Links`] table indexed like the slab, so an item can sit on
//! several lists at once and be unlinked from any of them in O(1). "No item"
//! is `None` everywhere outside this module.

use std::marker::PhantomData;

/// A typed index into a [`Slab`] (a transport, queue, entry, job, peer or
/// message id). Made by [`key!`].
pub trait Key: Copy + Eq {
    /// The slot number.
    fn index(self) -> usize;
    /// The key of slot `i`.
    fn from_index(i: usize) -> Self;
}

/// Declares a typed key: a `u32` newtype that implements [`Key`].
macro_rules! key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $crate::qmgr::list::Key for $name {
            fn index(self) -> usize {
                self.0 as usize
            }
            fn from_index(i: usize) -> Self {
                $name(u32::try_from(i).expect("fewer than 2^32 items"))
            }
        }
    };
}
pub(crate) use key;

/// A slab of items addressed by keys of type `K`, reusing freed slots: a
/// [`SideTable`] that hands out the keys itself.
#[derive(Debug, Clone)]
pub struct Slab<K, T> {
    table: SideTable<K, T>,
    free: Vec<u32>,
}

impl<K, T> Default for Slab<K, T> {
    fn default() -> Self {
        Slab {
            table: SideTable::default(),
            free: Vec::new(),
        }
    }
}

impl<K: Key, T> Slab<K, T> {
    /// Stores `item` and returns its key.
    pub fn insert(&mut self, item: T) -> K {
        match self.free.pop() {
            Some(i) => {
                self.table.items[i as usize] = Some(item);
                K::from_index(i as usize)
            }
            None => {
                self.table.items.push(Some(item));
                K::from_index(self.table.items.len() - 1)
            }
        }
    }

    /// Removes the item at `k`.
    ///
    /// Panics if `k` is not live (a core bug, never outside input).
    pub fn remove(&mut self, k: K) -> T {
        let item = self.table.remove(k).expect("slab: remove of a free slot");
        self.free.push(k.index() as u32);
        item
    }

    /// The item at `k`, if live.
    pub fn get(&self, k: K) -> Option<&T> {
        self.table.get(k)
    }

    /// The item at `k`, if live.
    pub fn get_mut(&mut self, k: K) -> Option<&mut T> {
        self.table.get_mut(k)
    }

    /// Number of live items.
    pub fn len(&self) -> usize {
        self.table.items.len() - self.free.len()
    }

    /// Keys of live items, in slot order.
    pub fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.table.iter().map(|(k, _)| k)
    }

    /// Live items with their keys, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &T)> + '_ {
        self.table.iter()
    }
}

impl<K: Key, T> std::ops::Index<K> for Slab<K, T> {
    type Output = T;
    fn index(&self, k: K) -> &T {
        self.get(k).expect("slab: index of a free slot")
    }
}

impl<K: Key, T> std::ops::IndexMut<K> for Slab<K, T> {
    fn index_mut(&mut self, k: K) -> &mut T {
        self.get_mut(k).expect("slab: index of a free slot")
    }
}

/// Values kept beside a slab's items, under the same keys (the shell's
/// record of each message the core holds): one slot per key, no hashing.
#[derive(Debug, Clone)]
pub struct SideTable<K, T> {
    items: Vec<Option<T>>,
    key: PhantomData<K>,
}

impl<K, T> Default for SideTable<K, T> {
    fn default() -> Self {
        SideTable {
            items: Vec::new(),
            key: PhantomData,
        }
    }
}

impl<K: Key, T> SideTable<K, T> {
    /// Stores `item` under `k`; returns what was there.
    pub fn insert(&mut self, k: K, item: T) -> Option<T> {
        let i = k.index();
        if i >= self.items.len() {
            self.items.resize_with(i + 1, || None);
        }
        self.items[i].replace(item)
    }

    /// The item under `k`, if any.
    pub fn get(&self, k: K) -> Option<&T> {
        self.items.get(k.index()).and_then(Option::as_ref)
    }

    /// The item under `k`, if any.
    pub fn get_mut(&mut self, k: K) -> Option<&mut T> {
        self.items.get_mut(k.index()).and_then(Option::as_mut)
    }

    /// Takes the item under `k` out, if any.
    pub fn remove(&mut self, k: K) -> Option<T> {
        self.items.get_mut(k.index()).and_then(Option::take)
    }

    /// The items with their keys, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &T)> + '_ {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_ref().map(|x| (K::from_index(i), x)))
    }
}

impl<K: Key, T> std::ops::Index<K> for SideTable<K, T> {
    type Output = T;
    fn index(&self, k: K) -> &T {
        self.get(k).expect("side table: no item under this key")
    }
}

/// "No item" inside a link (never seen outside this module).
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

fn some<K: Key>(i: u32) -> Option<K> {
    (i != NIL).then(|| K::from_index(i as usize))
}

fn raw<K: Key>(k: Option<K>) -> u32 {
    k.map_or(NIL, |k| k.index() as u32)
}

/// The links of one list kind, for every item of a slab.
#[derive(Debug, Clone)]
pub struct Links<K> {
    links: Vec<Link>,
    key: PhantomData<K>,
}

impl<K> Default for Links<K> {
    fn default() -> Self {
        Links {
            links: Vec::new(),
            key: PhantomData,
        }
    }
}

impl<K: Key> Links<K> {
    fn ensure(&mut self, k: K) {
        if self.links.len() <= k.index() {
            self.links.resize(k.index() + 1, UNLINKED);
        }
    }

    fn at(&mut self, i: u32) -> &mut Link {
        &mut self.links[i as usize]
    }

    /// The item after `k` on its list.
    pub fn next(&self, k: K) -> Option<K> {
        self.links.get(k.index()).and_then(|l| some(l.next))
    }

    /// The item before `k` on its list.
    pub fn prev(&self, k: K) -> Option<K> {
        self.links.get(k.index()).and_then(|l| some(l.prev))
    }
}

/// A list head: first and last item and the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct List<K> {
    head: u32,
    tail: u32,
    len: u32,
    key: PhantomData<K>,
}

impl<K> Default for List<K> {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
            key: PhantomData,
        }
    }
}

impl<K: Key> List<K> {
    /// The first item.
    pub fn first(&self) -> Option<K> {
        some(self.head)
    }

    /// The last item.
    pub fn last(&self) -> Option<K> {
        some(self.tail)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k` (`QMGR_LIST_APPEND`).
    pub fn push_back(&mut self, links: &mut Links<K>, k: K) {
        self.link_between(links, self.last(), k, None);
    }

    /// Prepends `k` (`QMGR_LIST_PREPEND`).
    pub fn push_front(&mut self, links: &mut Links<K>, k: K) {
        self.link_between(links, None, k, self.first());
    }

    /// Links `k` between `prev` and `next` (either may be absent; they must
    /// be neighbours on this list) (`QMGR_LIST_LINK`).
    pub fn link_between(&mut self, links: &mut Links<K>, prev: Option<K>, k: K, next: Option<K>) {
        links.ensure(k);
        let id = k.index() as u32;
        let (p, n) = (raw(prev), raw(next));
        *links.at(id) = Link { prev: p, next: n };
        if p != NIL {
            links.at(p).next = id;
        } else {
            self.head = id;
        }
        if n != NIL {
            links.at(n).prev = id;
        } else {
            self.tail = id;
        }
        self.len += 1;
    }

    /// Unlinks `k`, which must be on this list (`QMGR_LIST_UNLINK`).
    pub fn remove(&mut self, links: &mut Links<K>, k: K) {
        let id = k.index() as u32;
        let Link { prev, next } = *links.at(id);
        if prev != NIL {
            links.at(prev).next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            links.at(next).prev = prev;
        } else {
            self.tail = prev;
        }
        *links.at(id) = UNLINKED;
        self.len -= 1;
    }

    /// Moves `k` to the end, as `QMGR_LIST_ROTATE` makes the found item the
    /// last one (round robin).
    pub fn rotate_to_back(&mut self, links: &mut Links<K>, k: K) {
        if self.last() != Some(k) {
            self.remove(links, k);
            self.push_back(links, k);
        }
    }

    /// The items in order (collected; for iteration while mutating).
    pub fn items(&self, links: &Links<K>) -> Vec<K> {
        let mut out = Vec::with_capacity(self.len as usize);
        let mut cur = self.first();
        while let Some(k) = cur {
            out.push(k);
            cur = links.next(k);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    key!(
        /// A key for the tests.
        Id
    );

    fn ids(l: &List<Id>, links: &Links<Id>) -> Vec<usize> {
        l.items(links).into_iter().map(Key::index).collect()
    }

    #[test]
    fn side_table_follows_the_keys_it_is_given() {
        let mut slab: Slab<Id, &str> = Slab::default();
        let mut side: SideTable<Id, String> = SideTable::default();
        let a = slab.insert("a");
        let b = slab.insert("b");
        assert!(side.insert(b, "B".into()).is_none());
        assert_eq!(side.get(a), None);
        assert_eq!(side[b], "B");
        side.get_mut(b).unwrap().push('!');
        assert_eq!(
            side.iter().collect::<Vec<_>>(),
            vec![(b, &"B!".to_string())]
        );
        assert_eq!(side.remove(b).as_deref(), Some("B!"));
        assert_eq!(side.remove(b), None);
        slab.remove(b);
        // A reused slot is a new item beside it too.
        let c = slab.insert("c");
        assert_eq!(c, b);
        assert!(side.insert(c, "C".into()).is_none());
        assert_eq!(side[c], "C");
    }

    #[test]
    fn list_operations() {
        let mut links = Links::default();
        let mut l = List::default();
        let id = |i: usize| Id::from_index(i);
        for i in 0..5 {
            l.push_back(&mut links, id(i));
        }
        assert_eq!(ids(&l, &links), vec![0, 1, 2, 3, 4]);
        l.remove(&mut links, id(2));
        l.push_front(&mut links, id(2));
        assert_eq!(ids(&l, &links), vec![2, 0, 1, 3, 4]);
        l.rotate_to_back(&mut links, id(0));
        assert_eq!(ids(&l, &links), vec![2, 1, 3, 4, 0]);
        l.remove(&mut links, id(4));
        l.link_between(&mut links, Some(id(1)), id(4), Some(id(3)));
        assert_eq!(ids(&l, &links), vec![2, 1, 4, 3, 0]);
        assert_eq!(
            (l.first(), l.last(), l.len()),
            (Some(id(2)), Some(id(0)), 5)
        );
        for k in l.items(&links) {
            l.remove(&mut links, k);
        }
        assert!(l.is_empty() && l.first().is_none() && l.last().is_none());
    }

    #[test]
    fn slab_reuses_slots() {
        let mut s: Slab<Id, &str> = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.remove(a), "a");
        let c = s.insert("c");
        assert_eq!(c, a);
        assert_eq!((s[b], s[c], s.len()), ("b", "c", 2));
    }
}
