//! Part 4: Maglev table build time and disruption (share of flows that move when one of ten
//! backends leaves or joins; ideal: 1/N of the flows, exactly those of the backend).

use std::{net::IpAddr, time::Instant};

use anyhow::{anyhow, Result};
use lb_common::{
    addr::to_words,
    maglev::{self, MaglevBackend},
    maps::DEFAULT_TABLE_SIZE,
};
use serde_json::{json, Value};

use crate::{
    lab::backend_addrs,
    stats::{round3, Summary},
    Plan,
};

fn backends(addrs: &[IpAddr]) -> Vec<MaglevBackend> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (w, family) = to_words(*a);
            MaglevBackend {
                id: i as u32 + 1,
                key: [w[0], w[1], w[2], w[3], u32::from(family)],
                weight: 1,
            }
        })
        .collect()
}

fn build(b: &[MaglevBackend]) -> Result<Vec<u32>> {
    maglev::build(b, DEFAULT_TABLE_SIZE).map_err(|e| anyhow!("maglev: {e}"))
}

/// Share (%) of table slots whose backend changed between two tables. Slots hold ids; the
/// ids of a backend are the same in both builds (its position in `addrs`), so comparing
/// ids compares backends. With a uniform flow hash, the share of slots is the share of
/// flows that move.
fn moved_pct(a: &[u32], b: &[u32]) -> f64 {
    let moved = a.iter().zip(b).filter(|(x, y)| x != y).count();
    100.0 * moved as f64 / a.len() as f64
}

/// Runs part 4.
pub fn run(plan: &Plan) -> Result<Value> {
    let mut out = json!({ "table_size": DEFAULT_TABLE_SIZE });
    for n in [10usize, 100, 1000] {
        let b = backends(&backend_addrs(n, false));
        let mut ms = Vec::new();
        for _ in 0..plan.maglev_builds {
            let t = Instant::now();
            let table = build(&b)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(table);
        }
        let s = Summary::of(&ms);
        out[format!("build_ms_{n}_backends")] = json!(round3(s.median));
        out["spread"][format!("build_ms_{n}_backends")] = s.json();
    }
    // Ten backends; remove the last, or add an eleventh. Ids stay with their addresses.
    let addrs = backend_addrs(11, false);
    let ten = backends(&addrs[..10]);
    let eleven = backends(&addrs);
    let nine = &ten[..9];
    let t10 = build(&ten)?;
    let remove = moved_pct(&t10, &build(nine)?);
    let add = moved_pct(&t10, &build(&eleven)?);
    out["moved_pct_remove_1_of_10"] = json!(round3(remove));
    out["moved_pct_add_1_to_10"] = json!(round3(add));
    out["ideal_pct_remove_1_of_10"] = json!(10.0);
    out["ideal_pct_add_1_to_10"] = json!(round3(100.0 / 11.0));
    // Balance: the largest share any backend holds, against 1/10.
    let mut counts = [0u64; 11];
    for id in &t10 {
        counts[*id as usize] += 1;
    }
    let max_share = counts.iter().copied().max().unwrap_or(0) as f64 / t10.len() as f64;
    out["max_backend_share_pct_of_10"] = json!(round3(100.0 * max_share));
    eprintln!("  maglev: moved {remove:.2} % on removal, {add:.2} % on addition");
    Ok(out)
}
