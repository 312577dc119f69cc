use std::collections::{HashMap, BTreeMap};
use std::time::Instant;
fn key(i: u64) -> (u64,u64) { let x = i.wrapping_mul(0x9E3779B97F4A7C15); (x ^ (x>>29), x.rotate_left(17)) }
fn main() {
    let v: Vec<((u64,u64),(u64,u64))> = (0..1_000_000u64).map(|i| (key(i),(i,i))).collect();
    for _ in 0..3 {
    let t = Instant::now(); let mut h = HashMap::with_capacity(v.len()); for (k,s) in &v { h.insert(*k,*s); } println!("hash reserve+insert {:?} {}", t.elapsed(), h.len());
    let t = Instant::now(); let b: BTreeMap<_,_> = v.iter().copied().collect(); println!("btree collect {:?} {}", t.elapsed(), b.len());
    let t = Instant::now(); let mut b = BTreeMap::new(); for (k,s) in &v { b.insert(*k,*s); } println!("btree insert {:?} {}", t.elapsed(), b.len());
    }
}
