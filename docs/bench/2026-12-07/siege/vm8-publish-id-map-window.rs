use std::collections::{HashMap, BTreeMap, VecDeque};
use std::time::Instant;
fn key(i: u64) -> (u64,u64) { let x = i.wrapping_mul(0x9E3779B97F4A7C15); (x ^ (x>>29), x.rotate_left(17)) }
fn main() {
    // sliding window of 100k, 1M ops: worst single insert+remove
    for kind in ["hash", "btree"] {
        let mut h: HashMap<(u64,u64),(u64,u64)> = HashMap::new();
        let mut b: BTreeMap<(u64,u64),(u64,u64)> = BTreeMap::new();
        let mut order = VecDeque::new();
        let mut worst = (0f64, 0u64); let mut slow = 0; let t = Instant::now();
        for i in 0..5_000_000u64 {
            let s = Instant::now();
            if order.len() == 100_000 { let k = order.pop_front().unwrap(); if kind=="hash" { h.remove(&k); } else { b.remove(&k); } }
            let k = key(i); order.push_back(k);
            if kind=="hash" { h.insert(k,(i,i)); } else { b.insert(k,(i,i)); }
            let e = s.elapsed().as_secs_f64()*1e6;
            if e > worst.0 { worst = (e, i); }
            if e > 500.0 { slow += 1; if kind=="hash" {print!("{i}:{e:.0}us ");} }
        }
        println!("{kind}: total {:.0} ms, worst {:.0} us at op {}, ops over 0.5 ms: {slow}", t.elapsed().as_secs_f64()*1e3, worst.0, worst.1);
    }
}
