//! The distributions of a sweep's `[random]` table: parsing and drawing.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The distribution kinds of `[random]`.
const KINDS: &str = "uniform = [low, high], log_uniform = [low, high], int = [low, high] (inclusive) or choice = [values...]";

/// How a `[random]` key is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// Uniform in [low, high).
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Uniform in log space, in [low, high), 0 < low.
    LogUniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// An integer in [low, high], both included.
    Int {
        /// Lower bound.
        low: i64,
        /// Upper bound.
        high: i64,
    },
    /// One of the values, equally likely.
    Choice(Vec<toml::Value>),
}

impl Distribution {
    /// Parse a [random] value, `{ kind = [...] }`; the error says what to change.
    pub(crate) fn parse(v: &toml::Value) -> Result<Self, String> {
        let entry = match v.as_table() {
            Some(t) if t.len() == 1 => t.iter().next().expect("one entry"),
            _ => {
                return Err(format!(
                    "expected one of {KINDS}, e.g. {{ uniform = [0.9, 0.99] }}; found {v}"
                ))
            }
        };
        let (kind, args) = (entry.0.as_str(), entry.1);
        let list = args.as_array().map(Vec::as_slice).unwrap_or_default();
        let pair = || -> Option<(f64, f64)> {
            let f = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
            match list {
                [a, b] => Some((f(a)?, f(b)?)),
                _ => None,
            }
        };
        match kind {
            "uniform" | "log_uniform" => {
                let Some((low, high)) = pair() else {
                    return Err(format!(
                        "{kind} takes two numbers [low, high], found {args}"
                    ));
                };
                if low >= high || !low.is_finite() || !high.is_finite() {
                    return Err(format!(
                        "{kind} = [{low}, {high}] needs low < high: swap or widen the bounds"
                    ));
                }
                if kind == "uniform" {
                    return Ok(Distribution::Uniform { low, high });
                }
                if low <= 0.0 {
                    return Err(format!("log_uniform = [{low}, {high}] needs 0 < low: use a positive lower bound, or uniform"));
                }
                Ok(Distribution::LogUniform { low, high })
            }
            "int" => match list {
                [toml::Value::Integer(low), toml::Value::Integer(high)] if low <= high => {
                    Ok(Distribution::Int {
                        low: *low,
                        high: *high,
                    })
                }
                [toml::Value::Integer(low), toml::Value::Integer(high)] => Err(format!(
                    "int = [{low}, {high}] needs low <= high: swap the bounds"
                )),
                _ => Err(format!(
                    "int takes two integers [low, high] (both included), found {args}"
                )),
            },
            "choice" if !list.is_empty() => Ok(Distribution::Choice(list.to_vec())),
            "choice" => Err(format!(
                "choice takes a non-empty list of values, found {args}"
            )),
            other => Err(format!("unknown distribution kind {other:?}: use {KINDS}")),
        }
    }

    /// One draw of `key` for run `index`: a pure function of (seed, index, key).
    pub(crate) fn draw(&self, seed: u64, index: usize, key: &str) -> toml::Value {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        bytes[8..16].copy_from_slice(&(index as u64).to_le_bytes());
        bytes[16..24].copy_from_slice(&fnv1a(key.as_bytes()).to_le_bytes());
        bytes[24..].copy_from_slice(b"sweep/v1");
        let mut rng = ChaCha8Rng::from_seed(bytes);
        // Six significant digits are plenty for a hyperparameter and keep the
        // command lines readable; a rounding past a bound keeps the exact draw.
        let rounded = |x: f64, low: f64, high: f64| {
            let r: f64 = format!("{x:.5e}").parse().unwrap_or(x);
            toml::Value::Float(if (low..=high).contains(&r) { r } else { x })
        };
        match self {
            Distribution::Uniform { low, high } => {
                rounded(low + (high - low) * rng.random::<f64>(), *low, *high)
            }
            Distribution::LogUniform { low, high } => {
                let (a, b) = (low.ln(), high.ln());
                rounded((a + (b - a) * rng.random::<f64>()).exp(), *low, *high)
            }
            Distribution::Int { low, high } => toml::Value::Integer(rng.random_range(*low..=*high)),
            Distribution::Choice(values) => values[rng.random_range(0..values.len())].clone(),
        }
    }
}

/// FNV-1a, 64 bits: a hash that never changes between builds.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
