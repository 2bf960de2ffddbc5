//! Summaries of repeated measurements: median, min and max, never a lone sample.

use serde_json::{json, Value};

/// Median, min and max of some rounds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub n: usize,
}

impl Summary {
    /// Summarises `samples` (empty → all zero, which the report treats as "not measured").
    pub fn of(samples: &[f64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        }
    }

    /// `{"median", "min", "max", "rounds"}`.
    pub fn json(&self) -> Value {
        json!({ "median": round3(self.median), "min": round3(self.min), "max": round3(self.max), "rounds": self.n })
    }
}

/// Rounds to three decimals, so the JSON stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `a / b`, or 0 when `b` is 0 (the report shows such ratios as "n/a").
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// `a[i] / b[i]` for each round `i`: a ratio taken within the round (its configurations
/// ran seconds apart), less sensitive to the machine's drift between rounds.
pub fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| ratio(*x, *y)).collect()
}

/// The order in which A/B tools measure `n` builds in round `round`: rotated each round, so
/// that no build always comes first and a position effect cannot pass for a difference
/// between builds. (Two identical builds still came out up to 6 % apart in one forwarding
/// A/B of 24 rounds: differences below that mean nothing there.)
pub fn rotated(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + round) % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn every_build_takes_every_position() {
        let orders: Vec<Vec<usize>> = (0..3).map(|r| rotated(3, r).collect()).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1]]);
    }
}
