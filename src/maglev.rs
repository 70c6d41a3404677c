//! TEMPORARY STUB (replaced by the real Maglev module).
#![allow(missing_docs)]
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("bad")]
    Bad,
}
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
    n: usize,
}
impl Maglev {
    pub fn build<'a, I: IntoIterator<Item = (&'a str, u32)>>(
        backends: I,
        size: u32,
    ) -> Result<Maglev, MaglevError> {
        let b: Vec<_> = backends.into_iter().collect();
        let n = b.len();
        let table = if n == 0 {
            vec![]
        } else {
            (0..size).map(|i| i % n as u32).collect()
        };
        Ok(Maglev { table, n })
    }
    pub fn lookup(&self, key_hash: u64) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        Some(self.table[(key_hash % self.table.len() as u64) as usize] as usize)
    }
    pub fn preference(&self, key_hash: u64) -> Preference<'_> {
        Preference {
            m: self,
            start: self.lookup(key_hash).unwrap_or(0),
            i: 0,
        }
    }
    pub fn backend_count(&self) -> usize {
        self.n
    }
    pub fn size(&self) -> u32 {
        self.table.len() as u32
    }
    pub fn shares(&self) -> Vec<u32> {
        let mut s = vec![0; self.n];
        for &t in &self.table {
            s[t as usize] += 1;
        }
        s
    }
}
pub struct Preference<'a> {
    m: &'a Maglev,
    start: usize,
    i: usize,
}
impl Iterator for Preference<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.i >= self.m.n {
            return None;
        }
        let r = (self.start + self.i) % self.m.n;
        self.i += 1;
        Some(r)
    }
}
