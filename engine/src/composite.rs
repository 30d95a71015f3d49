//! The vectorised block-diffusion layout `[x_t ; x_0]` (llada2.md section 3): one forward gives, for every
//! block b of a noised sequence x_t, the logits of block b given x_t's block b and the CLEAN blocks before it,
//! which is exactly what the decoder sees when it works on block b (earlier blocks finished, later blocks
//! invisible). Training and likelihoods use it.
//!
//! The input is the noisy blocks `first..nb` followed by the clean blocks `0..nb-1` (the last clean block is
//! seen by nobody, and noisy blocks before `first`, all prompt, carry no loss, so both are left out). Both
//! halves keep their canvas positions for RoPE. The mask:
//! - a noisy query of block b sees the noisy keys of block b (both ways) and the clean keys of blocks < b;
//! - a clean query of block b sees the clean keys of blocks <= b (block-causal); it never sees noisy keys.

use tch::Tensor;

use crate::error::{Error, Result};

/// A batch in the composite layout, ready for [`crate::Model::forward_masked`].
#[derive(Debug)]
pub struct Composite {
    /// `[B, T]` int64: noisy part then clean part.
    pub ids: Tensor,
    /// `[T]` int64 canvas positions.
    pub positions: Tensor,
    /// `[T, T]` bool, true = attend.
    pub allowed: Tensor,
    /// Canvas position of the first noisy token (`first * block`); noisy tokens are `ids[:, 0..noisy_len]`.
    pub noisy_start: i64,
    pub noisy_len: i64,
}

/// `noisy` and `clean`: rows of equal length `nb * block` (whole blocks). `first`: the first block whose noisy
/// copy is included (the first block holding a response token in any row).
pub fn build(noisy: &[Vec<i64>], clean: &[Vec<i64>], block: i64, first: i64) -> Result<Composite> {
    let b = noisy.len();
    if b == 0 || clean.len() != b {
        return Err(Error::invalid("composite batch", format!("{b} noisy rows, {} clean", clean.len()), "needs the same non-zero number of rows"));
    }
    let l = noisy[0].len() as i64;
    if block <= 0 || l % block != 0 || noisy.iter().chain(clean).any(|r| r.len() as i64 != l) {
        return Err(Error::invalid("composite rows", l, format!("every row must have the same length, a multiple of the block length {block}")));
    }
    let nb = l / block;
    if !(0..nb).contains(&first) {
        return Err(Error::invalid("first noisy block", first, format!("must be in 0..{nb}")));
    }
    let (noisy_start, clean_len) = (first * block, (nb - 1) * block);
    let noisy_len = l - noisy_start;
    let t = noisy_len + clean_len;
    let mut ids = Vec::with_capacity(b * t as usize);
    for (n, c) in noisy.iter().zip(clean) {
        ids.extend_from_slice(&n[noisy_start as usize..]);
        ids.extend_from_slice(&c[..clean_len as usize]);
    }
    let positions: Vec<i64> = (noisy_start..l).chain(0..clean_len).collect();
    let is_noisy = |i: i64| i < noisy_len;
    let mut allowed = Vec::with_capacity((t * t) as usize);
    for q in 0..t {
        let qb = positions[q as usize] / block;
        for k in 0..t {
            let kb = positions[k as usize] / block;
            allowed.push(match (is_noisy(q), is_noisy(k)) {
                (true, true) => kb == qb,
                (true, false) => kb < qb,
                (false, true) => false,
                (false, false) => kb <= qb,
            });
        }
    }
    Ok(Composite {
        ids: Tensor::from_slice(&ids).view([b as i64, t]),
        positions: Tensor::from_slice(&positions),
        allowed: Tensor::from_slice(&allowed).view([t, t]),
        noisy_start,
        noisy_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DType;
    use crate::model::{BlockMask, KvCache};
    use crate::shapes::{shape, random_model};
    use tch::{Device, Kind};

    #[test]
    fn each_noisy_block_sees_what_the_decoder_sees() {
        // The composite logits of noisy block b equal a plain block-causal forward of
        // clean[..b*B] ++ noisy block b, for every b: one forward replaces a loop over blocks. With LLaDA2.2
        // block routing (micro-2.2: groups of 4) each half routes by its own aligned groups, which holds for
        // diffusion blocks of one and of two routing groups.
        for (name, block) in [("micro", 4), ("micro-2.2", 4), ("micro-2.2", 8)] {
            check_against_block_loop(name, block);
        }
    }

    fn check_against_block_loop(name: &str, block: i64) {
        let model = random_model(&shape(name).unwrap(), 3, Device::Cpu, DType::F32).unwrap();
        let nb = 16 / block;
        let clean: Vec<Vec<i64>> = (0..2).map(|r| (0..16).map(|i| (i * 7 + r * 5) % 100 + 8).collect()).collect();
        let noisy: Vec<Vec<i64>> = clean.iter().map(|c| c.iter().enumerate().map(|(i, &t)| if i % 3 == 0 { 1 } else { t }).collect()).collect();
        let first = 1;
        let comp = build(&noisy, &clean, block, first).unwrap();
        let logits = tch::no_grad(|| model.forward_masked(&comp.ids, &comp.positions, &comp.allowed, None).unwrap());
        for r in 0..2usize {
            for b in first..nb {
                let mut seq = clean[r][..(b * block) as usize].to_vec();
                seq.extend_from_slice(&noisy[r][(b * block) as usize..((b + 1) * block) as usize]);
                let ids = Tensor::from_slice(&seq).view([1, -1]);
                let want = model.forward(&ids, &mut KvCache::new(), b * block, BlockMask::block_causal(block)).unwrap().get(0);
                let got = logits.get(r as i64).narrow(0, (b - first) * block, block);
                let diff = (got - want).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{name}, block length {block}, row {r} block {b}: {diff}");
            }
        }
    }

    #[test]
    fn mask_shape_and_rules() {
        let rows = vec![vec![9i64; 8]];
        let c = build(&rows, &rows, 4, 0).unwrap();
        // noisy: blocks 0,1 (8 tokens); clean: block 0 (4 tokens)
        assert_eq!(c.ids.size(), [1, 12]);
        let a: Vec<Vec<bool>> = (0..12).map(|q| Vec::<bool>::try_from(&c.allowed.get(q).to_kind(Kind::Bool)).unwrap()).collect();
        assert!(a[0][3] && !a[0][4] && !a[0][8], "noisy block 0: own block only");
        assert!(a[5][4] && !a[5][0] && a[5][8], "noisy block 1: own block and clean block 0");
        assert!(a[9][8] && !a[9][0], "clean never sees noisy");
        assert!(build(&rows, &rows, 3, 0).is_err());
        assert!(build(&rows, &rows, 4, 2).unwrap_err().to_string().contains("first noisy block"));
    }
}
