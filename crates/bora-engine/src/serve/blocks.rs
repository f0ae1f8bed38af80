//! The KV block allocator: free blocks, reference counts, and the prefix cache.
//!
//! A full block of a sequence is registered under the hash of all tokens up to its end (a
//! chain hash), so a later request whose prompt starts with the same tokens finds the block and
//! shares it instead of recomputing it. Cached blocks nobody uses stay until the space is needed,
//! then go least recently used first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// The hash of a full block's tokens, chained to the hash of all blocks before it.
pub(crate) fn chain_hash(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// A change to the prefix cache, in the terms of vLLM's KV-cache events (which KV-aware routers
/// consume): a full block stored under its chain hash, one evicted, or all of them dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// A block registered for reuse: its chain hash, the previous block's (none for a
    /// sequence's first block), its tokens.
    Stored {
        /// The block's chain hash.
        hash: u64,
        /// The chain hash of the block before it.
        parent: Option<u64>,
        /// The block's tokens (a block's worth).
        tokens: Vec<u32>,
    },
    /// A cached block evicted to make room.
    Removed {
        /// The block's chain hash.
        hash: u64,
    },
    /// Every cached block dropped: the first event of an engine, whose cache starts empty (a
    /// restarted replica's router then forgets what the one before it held).
    Cleared,
}

#[derive(Debug)]
pub(crate) struct BlockAllocator {
    block_size: usize,
    refs: Vec<u32>,
    /// Blocks holding nothing anybody may want.
    free: VecDeque<u32>,
    /// Full blocks registered for reuse, by chain hash.
    by_hash: HashMap<u64, u32>,
    hash_of: Vec<Option<u64>>,
    /// Registered blocks nobody uses, by the tick they were last released (eviction order).
    idle: BTreeMap<u64, u32>,
    idle_tick: Vec<u64>,
    tick: u64,
    /// Full prompt blocks of admitted sequences, and those the prefix cache held (a sequence
    /// that waits and is looked up again counts once).
    pub lookups: u64,
    pub hits: u64,
    /// The prefix cache's changes since they were last taken, when recorded.
    events: Option<Vec<KvEvent>>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            refs: vec![0; num_blocks],
            free: (0..num_blocks as u32).collect(),
            by_hash: HashMap::new(),
            hash_of: vec![None; num_blocks],
            idle: BTreeMap::new(),
            idle_tick: vec![0; num_blocks],
            tick: 0,
            lookups: 0,
            hits: 0,
            events: None,
        }
    }

    /// Records the prefix cache's changes from now on ([`BlockAllocator::take_events`]),
    /// beginning with [`KvEvent::Cleared`] when the cache holds nothing yet.
    pub fn record_events(&mut self) {
        let empty = self.by_hash.is_empty();
        let events = self.events.get_or_insert_with(Vec::new);
        if empty {
            events.push(KvEvent::Cleared);
        }
    }

    /// The changes recorded since the last call (none when not recording).
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that an allocation can take: free ones and idle cached ones.
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks in use by sequences.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// A block for new positions; evicts the least recently used idle cached block when no
    /// block is free.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop_front() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.by_hash.remove(&h);
                    if let Some(ev) = &mut self.events {
                        ev.push(KvEvent::Removed { hash: h });
                    }
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one reference to each block.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            *r = r.saturating_sub(1);
            if *r == 0 {
                if self.hash_of[b as usize].is_some() {
                    self.tick += 1;
                    self.idle.insert(self.tick, b);
                    self.idle_tick[b as usize] = self.tick;
                } else {
                    self.free.push_back(b);
                }
            }
        }
    }

    /// Registers a sequence's full block, holding `tokens`, under its chain hash (a block with
    /// the same contents already registered is kept instead); `parent` is the chain hash of the
    /// block before it.
    pub fn register(&mut self, block: u32, hash: u64, parent: Option<u64>, tokens: &[u32]) {
        if self.by_hash.contains_key(&hash) || self.hash_of[block as usize].is_some() {
            return;
        }
        self.by_hash.insert(hash, block);
        self.hash_of[block as usize] = Some(hash);
        if let Some(ev) = &mut self.events {
            ev.push(KvEvent::Stored {
                hash,
                parent,
                tokens: tokens.to_vec(),
            });
        }
    }

    /// Counts an admitted prompt: its full blocks, and how many the prefix cache held.
    pub fn record(&mut self, full_blocks: usize, hits: usize) {
        self.lookups += full_blocks as u64;
        self.hits += hits as u64;
    }

    /// The cached blocks that hold `tokens`' leading full blocks, each with a new reference, and
    /// their chain hashes. At least one token is left to compute, so that its logits exist.
    pub fn lookup_prefix(&mut self, tokens: &[u32]) -> Vec<(u32, u64)> {
        let bs = self.block_size;
        let full = tokens.len().saturating_sub(1) / bs;
        let mut out = Vec::new();
        let mut prev = 0;
        for i in 0..full {
            let h = chain_hash(prev, &tokens[i * bs..(i + 1) * bs]);
            let Some(&b) = self.by_hash.get(&h) else {
                break;
            };
            if self.refs[b as usize] == 0 {
                self.idle.remove(&self.idle_tick[b as usize]);
            }
            self.refs[b as usize] += 1;
            out.push((b, h));
            prev = h;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_releases_and_reuses_prefixes() {
        let mut a = BlockAllocator::new(4, 2);
        let b0 = a.allocate().unwrap();
        let b1 = a.allocate().unwrap();
        a.record_events();
        let h0 = chain_hash(0, &[1, 2]);
        let h1 = chain_hash(h0, &[3, 4]);
        a.register(b0, h0, None, &[1, 2]);
        a.register(b1, h1, Some(h0), &[3, 4]);
        // The same contents again: the first block is kept, nothing stored.
        let b2 = a.allocate().unwrap();
        a.register(b2, h0, None, &[1, 2]);
        a.release(&[b2]);
        assert_eq!(
            a.take_events(),
            vec![
                // The cache was empty when recording began.
                KvEvent::Cleared,
                KvEvent::Stored {
                    hash: h0,
                    parent: None,
                    tokens: vec![1, 2]
                },
                KvEvent::Stored {
                    hash: h1,
                    parent: Some(h0),
                    tokens: vec![3, 4]
                },
            ]
        );
        assert_eq!(a.used(), 2);
        a.release(&[b0, b1]);
        assert_eq!((a.used(), a.available()), (0, 4));
        // The same prompt finds both blocks; one token is always left to compute.
        let hit = a.lookup_prefix(&[1, 2, 3, 4, 5]);
        assert_eq!(hit.iter().map(|x| x.0).collect::<Vec<_>>(), vec![b0, b1]);
        a.release(&[b0, b1]);
        assert_eq!(a.lookup_prefix(&[1, 2, 3, 4]).len(), 1);
        a.release(&[b0]);
        // A different prompt misses; filling the pool evicts idle cached blocks, oldest first.
        assert!(a.lookup_prefix(&[9, 9, 9]).is_empty());
        let all: Vec<u32> = (0..4).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(all.len(), 4);
        assert!(a.allocate().is_none());
        assert!(
            a.lookup_prefix(&[1, 2, 3, 4, 5]).is_empty(),
            "evicted blocks are forgotten"
        );
        // Each eviction is an event, least recently used first (the second block: the last
        // lookup used only the first).
        assert_eq!(
            a.take_events(),
            vec![KvEvent::Removed { hash: h1 }, KvEvent::Removed { hash: h0 }]
        );
    }
}
