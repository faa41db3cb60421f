//! Index-based intrusive doubly-linked lists and a slab, the Rust shape of
//! Postfix's `QMGR_LIST_*` macros (`qmgr/qmgr.h`): items live in a
//! [`Slab`]; each list kind keeps its links in its own [`Links`] table
//! indexed like the slab, so an item can sit on several lists at once and be
//! unlinked from any of them in O(1).

/// "No item".
pub const NIL: u32 = u32::MAX;

/// A slab of items addressed by `u32` indices, reusing freed slots.
#[derive(Debug, Clone)]
pub struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    /// Stores `item` and returns its index.
    pub fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(item);
                i
            }
            None => {
                self.items.push(Some(item));
                (self.items.len() - 1) as u32
            }
        }
    }

    /// Removes the item at `i`.
    ///
    /// Panics if `i` is not live (a core bug, never outside input).
    pub fn remove(&mut self, i: u32) -> T {
        let item = self.items[i as usize]
            .take()
            .expect("slab: remove of a free slot");
        self.free.push(i);
        item
    }

    /// The item at `i`, if live.
    pub fn get(&self, i: u32) -> Option<&T> {
        self.items.get(i as usize).and_then(Option::as_ref)
    }

    /// The item at `i`, if live.
    pub fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.items.get_mut(i as usize).and_then(Option::as_mut)
    }

    /// Number of live items.
    pub fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }

    /// Indices of live items, in index order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.items
            .iter()
            .enumerate()
            .filter(|(_, x)| x.is_some())
            .map(|(i, _)| i as u32)
    }
}

impl<T> std::ops::Index<u32> for Slab<T> {
    type Output = T;
    fn index(&self, i: u32) -> &T {
        self.items[i as usize]
            .as_ref()
            .expect("slab: index of a free slot")
    }
}

impl<T> std::ops::IndexMut<u32> for Slab<T> {
    fn index_mut(&mut self, i: u32) -> &mut T {
        self.items[i as usize]
            .as_mut()
            .expect("slab: index of a free slot")
    }
}

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

/// The links of one list kind, for every item of a slab.
#[derive(Debug, Clone, Default)]
pub struct Links {
    links: Vec<Link>,
}

impl Links {
    fn ensure(&mut self, id: u32) {
        if self.links.len() <= id as usize {
            self.links.resize(id as usize + 1, UNLINKED);
        }
    }

    /// The item after `id` on its list.
    pub fn next(&self, id: u32) -> Option<u32> {
        self.links
            .get(id as usize)
            .map(|l| l.next)
            .filter(|&n| n != NIL)
    }

    /// The item before `id` on its list.
    pub fn prev(&self, id: u32) -> Option<u32> {
        self.links
            .get(id as usize)
            .map(|l| l.prev)
            .filter(|&n| n != NIL)
    }
}

/// A list head: first and last item and the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct List {
    head: u32,
    tail: u32,
    len: u32,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl List {
    /// The first item.
    pub fn first(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// The last item.
    pub fn last(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `id` (`QMGR_LIST_APPEND`).
    pub fn push_back(&mut self, links: &mut Links, id: u32) {
        links.ensure(id);
        links.links[id as usize] = Link {
            prev: self.tail,
            next: NIL,
        };
        if self.tail != NIL {
            links.links[self.tail as usize].next = id;
        } else {
            self.head = id;
        }
        self.tail = id;
        self.len += 1;
    }

    /// Prepends `id` (`QMGR_LIST_PREPEND`).
    pub fn push_front(&mut self, links: &mut Links, id: u32) {
        links.ensure(id);
        links.links[id as usize] = Link {
            prev: NIL,
            next: self.head,
        };
        if self.head != NIL {
            links.links[self.head as usize].prev = id;
        } else {
            self.tail = id;
        }
        self.head = id;
        self.len += 1;
    }

    /// Links `id` between `prev` and `next` (either may be absent; they must
    /// be neighbours on this list) (`QMGR_LIST_LINK`).
    pub fn link_between(
        &mut self,
        links: &mut Links,
        prev: Option<u32>,
        id: u32,
        next: Option<u32>,
    ) {
        links.ensure(id);
        let (p, n) = (prev.unwrap_or(NIL), next.unwrap_or(NIL));
        links.links[id as usize] = Link { prev: p, next: n };
        if p != NIL {
            links.links[p as usize].next = id;
        } else {
            self.head = id;
        }
        if n != NIL {
            links.links[n as usize].prev = id;
        } else {
            self.tail = id;
        }
        self.len += 1;
    }

    /// Unlinks `id`, which must be on this list (`QMGR_LIST_UNLINK`).
    pub fn remove(&mut self, links: &mut Links, id: u32) {
        let Link { prev, next } = links.links[id as usize];
        if prev != NIL {
            links.links[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            links.links[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        links.links[id as usize] = UNLINKED;
        self.len -= 1;
    }

    /// Moves `id` to the end, as `QMGR_LIST_ROTATE` makes the found item the
    /// last one (round robin).
    pub fn rotate_to_back(&mut self, links: &mut Links, id: u32) {
        if self.tail != id {
            self.remove(links, id);
            self.push_back(links, id);
        }
    }

    /// The items in order (collected; for iteration while mutating).
    pub fn items(&self, links: &Links) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len as usize);
        let mut cur = self.first();
        while let Some(id) = cur {
            out.push(id);
            cur = links.next(id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_operations() {
        let mut links = Links::default();
        let mut l = List::default();
        for i in 0..5 {
            l.push_back(&mut links, i);
        }
        assert_eq!(l.items(&links), vec![0, 1, 2, 3, 4]);
        l.remove(&mut links, 2);
        l.push_front(&mut links, 2);
        assert_eq!(l.items(&links), vec![2, 0, 1, 3, 4]);
        l.rotate_to_back(&mut links, 0);
        assert_eq!(l.items(&links), vec![2, 1, 3, 4, 0]);
        l.remove(&mut links, 4);
        l.link_between(&mut links, Some(1), 4, Some(3));
        assert_eq!(l.items(&links), vec![2, 1, 4, 3, 0]);
        assert_eq!((l.first(), l.last(), l.len()), (Some(2), Some(0), 5));
        for i in l.items(&links) {
            l.remove(&mut links, i);
        }
        assert!(l.is_empty() && l.first().is_none() && l.last().is_none());
    }

    #[test]
    fn slab_reuses_slots() {
        let mut s = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.remove(a), "a");
        let c = s.insert("c");
        assert_eq!(c, a);
        assert_eq!((s[b], s[c], s.len()), ("b", "c", 2));
    }
}
