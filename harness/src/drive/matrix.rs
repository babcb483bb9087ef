//! The run matrix of `torture`: scenarios × kernel variants × repeats, one cell per run, and
//! its split into shards for a CI matrix (`--shard K/N`).
//!
//! Every repeat of a scenario has its own seed, derived from the base seed ([`derive_seed`]:
//! repeat 1 is the base seed itself, so `--repeat 1` plans what a run without it did). All
//! kernels of one scenario and repeat share that seed, hence one schedule, and always land in
//! the same shard, so the A/B comparison of a repeat can be made within a shard.
//!
//! Sharding is deterministic (it depends only on the scenarios, kernels, repeats and seed),
//! disjoint and complete (every cell in exactly one shard), and balanced by the number of VMs
//! each shard boots (a skipped cell boots none): groups go, heaviest first, to the shard with
//! the least load so far, so the loads of two shards differ by at most one group's weight.
//!
//! A torture invocation records the cells it was given as `matrix-<stamp>.json` in its results
//! folder; `results merge` checks every recorded cell against the run folders it finds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::drive::requires::Absences;
use crate::drive::scenario::{KernelVariant, Scenario};

/// `--kernel`'s value: comma-separated variant names in order, the first being the A/B
/// baseline. `both` is `vanilla,resmgr`. Errors list the known names.
pub fn parse_kernels(text: &str) -> Result<Vec<KernelVariant>, String> {
    let mut out: Vec<KernelVariant> = Vec::new();
    for name in text.split(',').map(str::trim) {
        let names: Vec<KernelVariant> = match name {
            "both" => vec![KernelVariant::Vanilla, KernelVariant::Resmgr],
            _ => match KernelVariant::ALL.into_iter().find(|k| k.name() == name) {
                Some(k) => vec![k],
                None => {
                    let known: Vec<&str> = KernelVariant::ALL.iter().map(|k| k.name()).collect();
                    return Err(format!("unknown kernel variant {name:?}; known: {} (and both = vanilla,resmgr)", known.join(", ")));
                }
            },
        };
        for k in names {
            if out.contains(&k) {
                return Err(format!("{k} is listed twice in {text:?}"));
            }
            out.push(k);
        }
    }
    Ok(out)
}

/// `--shard K/N`: the K-th (1-based) of N slices of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole matrix.
    pub const ALL: Shard = Shard { index: 1, count: 1 };
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let bad = || format!("{text:?} is not K/N with 1 <= K <= N (e.g. 2/4)");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The seed of repeat `repeat` (1-based) of a run whose base seed is `base`: `base` itself for
/// repeat 1, else SplitMix64 of `base + repeat - 1` (a bijection of its input, so repeats of
/// one base never share a seed). Recorded in meta.json as [`SEED_RULE`].
pub fn derive_seed(base: u64, repeat: u32) -> u64 {
    if repeat <= 1 {
        return base;
    }
    let mut z = base.wrapping_add(u64::from(repeat - 1)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How [`derive_seed`] derives, in words, for meta.json.
pub const SEED_RULE: &str = "repeat 1: the base seed; repeat r > 1: splitmix64(base + r - 1)";

/// Which repeat of a cell a run is, as meta.json records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatMeta {
    /// 1-based.
    pub index: u32,
    pub of: u32,
    /// The seed given to torture; this run's seed is derived from it (see `rule`).
    pub base_seed: u64,
    pub rule: std::borrow::Cow<'static, str>,
}

impl RepeatMeta {
    pub fn new(index: u32, of: u32, base_seed: u64) -> RepeatMeta {
        RepeatMeta { index, of, base_seed, rule: SEED_RULE.into() }
    }
}

/// One run of the matrix: a scenario on a kernel, one repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub scenario: String,
    pub kernel: KernelVariant,
    /// 1-based, of `repeats`.
    pub repeat: u32,
    pub repeats: u32,
    pub seed: u64,
    pub shard: Shard,
    /// Why the cell boots nothing (the scenario does not apply to the kernel), if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
}

impl Cell {
    pub fn repeat_meta(&self, base_seed: u64) -> RepeatMeta {
        RepeatMeta::new(self.repeat, self.repeats, base_seed)
    }

    /// `NAME on KERNEL` (with `#r/N` when repeated): how progress and summaries name it.
    pub fn label(&self) -> String {
        let repeat = if self.repeats > 1 { format!(" #{}/{}", self.repeat, self.repeats) } else { String::new() };
        format!("{} on {}{repeat}", self.scenario, self.kernel)
    }
}

/// The full matrix, every cell with its shard under `shards` slices, in order: scenario (as
/// given), repeat, kernel (as given). A cell is skipped where its scenario leaves the kernel out
/// or needs what `absent` says the kernel's build lacks (`harness::drive::requires`).
pub fn plan(scenarios: &[Scenario], kernels: &[KernelVariant], absent: &Absences, repeats: u32, base_seed: u64, shards: u32) -> Vec<Cell> {
    let repeats = repeats.max(1);
    let shards = shards.max(1);
    // One group per scenario and repeat: its kernels share a seed and a shard.
    let mut groups: Vec<(usize, Vec<Cell>)> = Vec::new();
    for scenario in scenarios {
        for repeat in 1..=repeats {
            let seed = derive_seed(base_seed, repeat);
            let cells: Vec<Cell> = kernels
                .iter()
                .map(|&kernel| Cell {
                    scenario: scenario.name.clone(),
                    kernel,
                    repeat,
                    repeats,
                    seed,
                    shard: Shard::ALL,
                    skip: scenario.skip_reason(kernel, absent.get(&kernel).map_or(&[][..], Vec::as_slice)),
                })
                .collect();
            let weight = cells.iter().filter(|c| c.skip.is_none()).count();
            groups.push((weight, cells));
        }
    }
    // Heaviest first (stable: ties keep matrix order), each to the least loaded shard (ties:
    // the one with fewer groups, so groups that boot nothing spread too; then the lowest index).
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(groups[g].0));
    let mut load = vec![(0usize, 0usize); shards as usize];
    let mut shard_of = vec![0u32; groups.len()];
    for g in order {
        let lightest = (0..load.len()).min_by_key(|&s| (load[s], s)).unwrap_or(0);
        load[lightest].0 += groups[g].0;
        load[lightest].1 += 1;
        shard_of[g] = lightest as u32 + 1;
    }
    groups
        .into_iter()
        .zip(shard_of)
        .flat_map(|((_, cells), index)| cells.into_iter().map(move |c| Cell { shard: Shard { index, count: shards }, ..c }))
        .collect()
}

/// The cells of `shard` (all of them for [`Shard::ALL`]).
pub fn shard_cells(cells: Vec<Cell>, shard: Shard) -> Vec<Cell> {
    cells.into_iter().filter(|c| c.shard.index == shard.index).collect()
}

/// `torture --list`: one line per cell.
pub fn list_text(cells: &[Cell]) -> String {
    let mut out = String::new();
    for c in cells {
        let skip = c.skip.as_ref().map_or_else(String::new, |why| format!(" skip ({why})"));
        out.push_str(&format!(
            "shard {} {} {} repeat {}/{} seed {}{skip}\n",
            c.shard, c.scenario, c.kernel, c.repeat, c.repeats, c.seed
        ));
    }
    out
}

/// `matrix-<stamp>.json`: the cells one torture invocation was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixRecord {
    pub base_seed: u64,
    pub repeats: u32,
    pub kernels: Vec<KernelVariant>,
    pub shard: Shard,
    pub cells: Vec<Cell>,
}

/// Prefix of the matrix records in a results folder.
pub const MATRIX_PREFIX: &str = "matrix-";

impl MatrixRecord {
    /// Writes `root/matrix-<stamp>[-N].json` (atomically) and returns its path.
    pub fn write(&self, root: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let stamp = crate::judge::results::stamp();
        let shard = if self.shard.count > 1 { format!("-shard-{}-of-{}", self.shard.index, self.shard.count) } else { String::new() };
        let mut n = 1;
        let mut path = root.join(format!("{MATRIX_PREFIX}{stamp}{shard}.json"));
        while path.exists() {
            n += 1;
            path = root.join(format!("{MATRIX_PREFIX}{stamp}{shard}-{n}.json"));
        }
        crate::judge::results::write_atomic(&path, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(path)
    }

    /// Reads one; a bad file is an error at its line and column.
    pub fn load(path: &Path) -> Result<MatrixRecord> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}:{}:{}: not a matrix record: {e}", path.display(), e.line(), e.column()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str, kernels: &[KernelVariant]) -> Scenario {
        let kernels: Vec<&str> = kernels.iter().map(|k| k.name()).collect();
        let yaml = format!("name: {name}\nkernels: [{}]\nsteps:\n  - observe\n", kernels.join(", "));
        Scenario::parse(&yaml, Path::new("test.yaml")).unwrap()
    }

    const BOTH: [KernelVariant; 2] = [KernelVariant::Vanilla, KernelVariant::Resmgr];

    fn scenarios(n: usize) -> Vec<Scenario> {
        // Every third applies to resmgr only: groups of weight 1 among groups of weight 2.
        (0..n).map(|i| scenario(&format!("s{i}"), if i % 3 == 2 { &[KernelVariant::Resmgr] } else { &BOTH })).collect()
    }

    #[test]
    fn kernel_lists_parse_in_order_with_both_as_an_alias() {
        assert_eq!(parse_kernels("vanilla"), Ok(vec![KernelVariant::Vanilla]));
        assert_eq!(parse_kernels("resmgr,vanilla"), Ok(vec![KernelVariant::Resmgr, KernelVariant::Vanilla]));
        assert_eq!(parse_kernels("both"), Ok(BOTH.to_vec()));
        assert_eq!(parse_kernels("both,vanilla"), Err("vanilla is listed twice in \"both,vanilla\"".into()));
        let err = parse_kernels("vanilla,6.1").unwrap_err();
        assert!(err.starts_with("unknown kernel variant \"6.1\"; known: vanilla, resmgr"), "{err}");
    }

    #[test]
    fn shard_spec_parses_and_rejects_nonsense() {
        assert_eq!("2/4".parse(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "2", "a/b", "1/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard { index: 3, count: 7 }.to_string(), "3/7");
    }

    /// Repeat 1 keeps the base seed (a run without `--repeat` plans what it always did); the
    /// others are distinct from it and from each other, and pinned so replays stay valid.
    #[test]
    fn seeds_derive_distinct_and_stable() {
        assert_eq!(derive_seed(7, 1), 7);
        let seeds: std::collections::BTreeSet<u64> = (1..=1000).map(|r| derive_seed(7, r)).collect();
        assert_eq!(seeds.len(), 1000);
        assert_eq!(derive_seed(0, 2), 10451216379200822465);
        assert_eq!(derive_seed(u64::MAX, 3), derive_seed(u64::MAX, 3));
    }

    /// Every cell lands in exactly one shard (disjoint, complete), all kernels of one scenario
    /// and repeat in the same shard with the same seed, and booting loads differ by at most one
    /// group's weight; the same inputs always give the same split.
    #[test]
    fn shards_are_disjoint_complete_balanced_and_keep_kernels_together() {
        for (n_scenarios, repeats, shards) in [(12, 1, 2), (12, 3, 4), (5, 2, 7), (1, 1, 3), (7, 10, 3)] {
            let all = plan(&scenarios(n_scenarios), &BOTH, &Absences::new(), repeats, 42, shards);
            assert_eq!(all.len(), n_scenarios * repeats as usize * 2);
            assert_eq!(all, plan(&scenarios(n_scenarios), &BOTH, &Absences::new(), repeats, 42, shards), "deterministic");
            let mut union: Vec<Cell> = Vec::new();
            let mut loads = Vec::new();
            for k in 1..=shards {
                let part = shard_cells(all.clone(), Shard { index: k, count: shards });
                assert!(part.iter().all(|c| c.shard == Shard { index: k, count: shards }));
                loads.push(part.iter().filter(|c| c.skip.is_none()).count());
                union.extend(part);
            }
            union.sort_by(|a, b| (&a.scenario, a.repeat, a.kernel).cmp(&(&b.scenario, b.repeat, b.kernel)));
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| (&a.scenario, a.repeat, a.kernel).cmp(&(&b.scenario, b.repeat, b.kernel)));
            assert_eq!(union, sorted, "complete and disjoint");
            let (max, min) = (loads.iter().max().unwrap(), loads.iter().min().unwrap());
            assert!(max - min <= 2, "{n_scenarios}x{repeats} over {shards}: loads {loads:?}");
            if n_scenarios * repeats as usize >= shards as usize {
                assert!((1..=shards).all(|k| all.iter().any(|c| c.shard.index == k)), "no shard is left empty");
            }
            for pair in all.chunks(2) {
                assert_eq!((&pair[0].scenario, pair[0].repeat, pair[0].seed, pair[0].shard), (&pair[1].scenario, pair[1].repeat, pair[1].seed, pair[1].shard));
            }
        }
    }

    /// Cells that boot nothing (skips) still spread over the shards.
    #[test]
    fn skip_only_groups_spread_too() {
        let cells = plan(&[scenario("only-resmgr", &[KernelVariant::Resmgr])], &[KernelVariant::Vanilla], &Absences::new(), 4, 1, 2);
        let shards: Vec<u32> = cells.iter().map(|c| c.shard.index).collect();
        assert_eq!(shards, [1, 2, 1, 2]);
    }

    #[test]
    fn cells_carry_skips_and_list_one_line_each() {
        let cells = plan(&[scenario("only-resmgr", &[KernelVariant::Resmgr])], &BOTH, &Absences::new(), 2, 9, 1);
        let text = list_text(&cells);
        let s2 = derive_seed(9, 2);
        assert_eq!(
            text,
            format!(
                "shard 1/1 only-resmgr vanilla repeat 1/2 seed 9 skip (applies to: resmgr)\n\
                 shard 1/1 only-resmgr resmgr repeat 1/2 seed 9\n\
                 shard 1/1 only-resmgr vanilla repeat 2/2 seed {s2} skip (applies to: resmgr)\n\
                 shard 1/1 only-resmgr resmgr repeat 2/2 seed {s2}\n"
            )
        );
        assert_eq!(cells[3].label(), "only-resmgr on resmgr #2/2");
    }

    #[test]
    fn matrix_records_round_trip_and_bad_ones_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let record = MatrixRecord { base_seed: 1, repeats: 1, kernels: BOTH.to_vec(), shard: Shard { index: 1, count: 2 }, cells: plan(&scenarios(2), &BOTH, &Absences::new(), 1, 1, 2) };
        let path = record.write(dir.path()).unwrap();
        assert!(path.file_name().unwrap().to_string_lossy().ends_with("-shard-1-of-2.json"));
        assert_eq!(MatrixRecord::load(&path).unwrap(), record);
        assert_ne!(record.write(dir.path()).unwrap(), path);
        std::fs::write(&path, "{\n  \"base_seed\": \"x\"\n}").unwrap();
        let err = format!("{:#}", MatrixRecord::load(&path).unwrap_err());
        assert!(err.starts_with(&format!("{}:2:", path.display())), "{err}");
    }
}
