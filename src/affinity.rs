//! TEMPORARY STUB (replaced by the real stick table).
#![allow(missing_docs)]
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);
impl ClientKey {
    pub fn new(ip: IpAddr, _spec: KeySpec) -> ClientKey {
        ClientKey(ip)
    }
    pub fn hash64(&self) -> u64 {
        match self.0 {
            IpAddr::V4(a) => (u32::from(a) as u64).wrapping_mul(0x9E3779B97F4A7C15),
            IpAddr::V6(a) => (u128::from(a) as u64).wrapping_mul(0x9E3779B97F4A7C15),
        }
    }
}
impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StickStats {
    pub inserts: u64,
    pub evictions: u64,
    pub expirations: u64,
}
pub struct StickTable<V: Copy + Eq + Send> {
    m: Mutex<HashMap<ClientKey, (V, Instant)>>,
    ttl: Duration,
}
impl<V: Copy + Eq + Send> StickTable<V> {
    pub fn new(_max: usize, ttl: Duration) -> Self {
        StickTable {
            m: Mutex::new(HashMap::new()),
            ttl,
        }
    }
    pub fn get(&self, key: &ClientKey, now: Instant) -> Option<V> {
        let mut m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(key) {
            Some((v, t)) if now.duration_since(*t) < self.ttl => {
                *t = now;
                Some(*v)
            }
            _ => None,
        }
    }
    pub fn insert(&self, key: ClientKey, value: V, now: Instant) {
        self.m
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (value, now));
    }
    pub fn remove(&self, key: &ClientKey) -> Option<V> {
        self.m
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
            .map(|x| x.0)
    }
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let mut m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        let b = m.len();
        m.retain(|_, (v, _)| keep(v));
        b - m.len()
    }
    pub fn expire(&self, now: Instant) -> usize {
        let mut m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        let b = m.len();
        m.retain(|_, (_, t)| now.duration_since(*t) < self.ttl);
        b - m.len()
    }
    pub fn len(&self) -> usize {
        self.m.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn stats(&self) -> StickStats {
        StickStats::default()
    }
}
