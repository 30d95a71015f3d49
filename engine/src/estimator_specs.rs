//! The estimator registry: how each likelihood estimator is written (`stratified:4:anti`), what it is, and how
//! its spec is read. [`Estimator::parse`], [`Estimator::describe`], the `likelihood` help, completion and the RL
//! setting all read [`ESTIMATORS`]: a new estimator is one row here (and, if it needs one, a constructor).

use crate::edit_likelihood::DEFAULT_RATE;
use crate::error::{Error, Result};
use crate::likelihood::{Estimator, D1_PROMPT_MASK, MAX_COUNT};

/// One kind of estimator.
pub struct EstimatorKind {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// How a spec of this kind is written: `stratified:N[:anti]`.
    pub syntax: &'static str,
    pub about: &'static str,
    /// A spec to offer (completion, examples).
    pub example: &'static str,
    /// Reads the parts after the name (`["4", "anti"]` of `stratified:4:anti`); `name` is the word used.
    pub parse: fn(name: &str, parts: &[&str]) -> std::result::Result<Estimator, String>,
}

pub static ESTIMATORS: &[EstimatorKind] = &[
    EstimatorKind {
        name: "stratified",
        aliases: &["vectorised", "vectorized"],
        syntax: "stratified:N[:anti]",
        about: "EBPO's vectorised ELBO: N stratified levels sharing one uniform draw (the default, N = 4)",
        example: "stratified:4",
        parse: |_, p| counted(p, 4).map(|(levels, antithetic)| Estimator::Stratified { levels, antithetic }),
    },
    EstimatorKind {
        name: "midpoint",
        aliases: &[],
        syntax: "midpoint:N[:anti]",
        about: "deterministic midpoint levels (n - 1/2) / N: lower variance, quadrature bias",
        example: "midpoint:4",
        parse: |_, p| counted(p, 4).map(|(n, anti)| Estimator::midpoint(n, anti)),
    },
    EstimatorKind {
        name: "gauss",
        aliases: &["gauss-legendre"],
        syntax: "gauss:N[:anti]",
        about: "N-point Gauss-Legendre levels and weights: deterministic levels, unbiased once 2N >= the block length",
        example: "gauss:4",
        parse: |_, p| counted(p, 4).map(|(n, anti)| Estimator::gauss(n, anti)),
    },
    EstimatorKind {
        name: "mc",
        aliases: &["monte-carlo", "montecarlo"],
        syntax: "mc:N[:anti]",
        about: "Monte-Carlo (LLaDA): N independent levels t ~ U(0, 1]",
        example: "mc:16",
        parse: |_, p| counted(p, 16).map(|(samples, antithetic)| Estimator::MonteCarlo { samples, antithetic }),
    },
    EstimatorKind {
        name: "mean-field",
        aliases: &["meanfield", "d1"],
        syntax: "mean-field[:P]",
        about: "d1's one-step estimate: the whole response masked; P masks each prompt token (d1: 0.3)",
        example: "mean-field",
        parse: |name, p| {
            let prompt_mask = match p {
                [] if name == "d1" => D1_PROMPT_MASK,
                [] => 0.0,
                [p] => p.parse::<f64>().ok().filter(|p| (0.0..1.0).contains(p)).ok_or("P is a probability in [0, 1)")?,
                _ => return Err("mean-field takes only P".into()),
            };
            Ok(Estimator::MeanField { prompt_mask })
        },
    },
    EstimatorKind {
        name: "edit",
        aliases: &[],
        syntax: "edit:N[:R]",
        about: "LLaDA2.2 models: log-probability of the blocks' edit actions on Levenshtein drafts at edit rate R (0.1)",
        example: "edit:4",
        parse: |_, p| {
            let rate = match p.get(1) {
                None => DEFAULT_RATE,
                Some(r) => r.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or("R is an edit rate in [0, 1]")?,
            };
            if p.len() > 2 {
                return Err("edit takes only N and R".into());
            }
            Ok(Estimator::Edit { levels: count(p.first(), 4)?, rate })
        },
    },
];

/// A count part (`N`), or `default` when it is missing.
fn count(part: Option<&&str>, default: usize) -> std::result::Result<usize, String> {
    match part {
        None => Ok(default),
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_COUNT).contains(n))
            .ok_or_else(|| format!("the count is a whole number from 1 to {MAX_COUNT} (each is a noised copy of the response in a forward)")),
    }
}

/// `N[:anti]`.
fn counted(parts: &[&str], default: usize) -> std::result::Result<(usize, bool), String> {
    let anti = match parts.get(1) {
        None => false,
        Some(&"anti") | Some(&"antithetic") => true,
        Some(_) => return Err("the third part can only be `anti`".into()),
    };
    if parts.len() > 2 {
        return Err("too many parts".into());
    }
    Ok((count(parts.first(), default)?, anti))
}

/// The registry row a name or alias stands for.
pub fn find(name: &str) -> Option<&'static EstimatorKind> {
    let name = name.to_ascii_lowercase();
    ESTIMATORS.iter().find(|k| k.name == name || k.aliases.contains(&name.as_str()))
}

/// Reads a spec through the registry; the error lists every way to write one.
pub(crate) fn parse(spec: &str) -> Result<Estimator> {
    let mut parts = spec.trim().split(':');
    let name = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let syntaxes = || ESTIMATORS.iter().map(|k| k.syntax).collect::<Vec<_>>().join(", ");
    let bad = |why: &str| Error::invalid("estimator", spec, format!("{why}; expected {}", syntaxes()));
    let kind = find(name).ok_or_else(|| bad("unknown estimator"))?;
    (kind.parse)(&name.to_ascii_lowercase(), &rest).map_err(|why| bad(&why))
}

/// The spec of an estimator of explicit levels that a registry row makes (`midpoint:4`, `gauss:8:anti`).
pub(crate) fn describe_levels(e: &Estimator, n: usize, antithetic: bool) -> Option<String> {
    let parts: Vec<String> = std::iter::once(n.to_string()).chain(antithetic.then(|| "anti".to_string())).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    ESTIMATORS.iter().find(|k| (k.parse)(k.name, &parts).as_ref() == Ok(e)).map(|k| format!("{}:{}", k.name, parts.join(":")))
}

/// The `n`-point Gauss-Legendre rule on (0, 1): nodes (ascending) and weights (they sum to 1).
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut nodes, mut weights) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        // Newton's method on P_n from the classic starting guess; the root of P_n on (-1, 1).
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0, x);
            for k in 2..=n {
                let p2 = ((2 * k - 1) as f64 * x * p1 - (k - 1) as f64 * p0) / k as f64;
                p0 = p1;
                p1 = p2;
            }
            dp = n as f64 * (x * p1 - p0) / (x * x - 1.0);
            let step = p1 / dp;
            x -= step;
            if step.abs() < 1e-15 {
                break;
            }
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        nodes.push((x + 1.0) / 2.0);
        weights.push(w / 2.0);
    }
    let mut pairs: Vec<(f64, f64)> = nodes.into_iter().zip(weights).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    pairs.into_iter().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_integrates_polynomials_of_degree_2n_minus_1() {
        for n in [1, 2, 3, 5, 8, 16] {
            let (t, w) = gauss_legendre(n);
            assert!(t.iter().all(|t| *t > 0.0 && *t < 1.0) && t.windows(2).all(|p| p[0] < p[1]), "{n}: {t:?}");
            for degree in 0..2 * n {
                let integral: f64 = t.iter().zip(&w).map(|(t, w)| w * t.powi(degree as i32)).sum();
                assert!((integral - 1.0 / (degree as f64 + 1.0)).abs() < 1e-12, "n {n} degree {degree}: {integral}");
            }
        }
    }

    #[test]
    fn every_row_parses_its_example_and_describes_back() {
        for k in ESTIMATORS {
            let e = Estimator::parse(k.example).unwrap_or_else(|e| panic!("{}: {e}", k.example));
            assert_eq!(Estimator::parse(&e.describe()).unwrap(), e, "{}", k.example);
            for alias in k.aliases {
                assert!(Estimator::parse(alias).is_ok(), "{alias}");
            }
        }
        assert_eq!(Estimator::parse("gauss:8:anti").unwrap().describe(), "gauss:8:anti");
        assert_eq!(Estimator::parse("midpoint:3").unwrap().describe(), "midpoint:3");
        let e = Estimator::parse("simpson:4").unwrap_err().to_string();
        assert!(e.contains("unknown estimator") && e.contains("gauss:N[:anti]") && e.contains("edit:N[:R]"), "{e}");
    }
}
