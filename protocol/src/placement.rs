//! Which accelerators and cores each slot of a worker gets.
//!
//! A site names its nodes' accelerators (a count, or names such as Intel's
//! GPU tiles `0.0`, `0.1`, …), their vendor, and how the node's cores are
//! shared ([`CpuAffinity`]). Every worker divides these among its slots with
//! [`place`], a pure function: the accelerators evenly (every slot the same
//! number, so the daemon may treat a worker's slots alike), the cores by
//! the affinity rule. A slot's servable processes then see only its
//! devices, through the vendor's variable ([`AcceleratorKind::env`]), and
//! run on its cores only.
//!
//! The same rules check a site file (the daemon) and split the node (the
//! worker), so a configuration the check accepts is one every worker can
//! apply, save for cores a node lacks, which only the node can tell.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Most CPUs a core list may name (beyond any node's).
pub const MAX_CPU: u32 = 65_535;

/// Whose accelerators a node has: decides the variable that makes a
/// slot's devices the only ones its processes see.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AcceleratorKind {
    /// NVIDIA GPUs: `CUDA_VISIBLE_DEVICES`.
    Nvidia,
    /// AMD GPUs or GCDs: `ROCR_VISIBLE_DEVICES` (and `HIP_VISIBLE_DEVICES`
    /// numbering the selected devices from 0).
    Amd,
    /// Intel GPUs or tiles (`0.0`, `0.1`): `ZE_AFFINITY_MASK`.
    Intel,
}

impl AcceleratorKind {
    /// Every kind, for messages.
    pub const ALL: [AcceleratorKind; 3] = [
        AcceleratorKind::Nvidia,
        AcceleratorKind::Amd,
        AcceleratorKind::Intel,
    ];

    /// The kind's name, as written in site files and on the worker's
    /// command line.
    pub fn name(self) -> &'static str {
        match self {
            AcceleratorKind::Nvidia => "nvidia",
            AcceleratorKind::Amd => "amd",
            AcceleratorKind::Intel => "intel",
        }
    }

    /// The kind named `name`, if any.
    pub fn from_name(name: &str) -> Option<AcceleratorKind> {
        Self::ALL.into_iter().find(|k| k.name() == name.trim())
    }

    /// The variables that make `devices` the only ones a process sees.
    ///
    /// For AMD, `ROCR_VISIBLE_DEVICES` selects the devices and
    /// `HIP_VISIBLE_DEVICES` counts them from 0: HIP numbers only the
    /// devices ROCm left visible, so giving it the node's numbers (or
    /// inheriting a job-wide value) would hide a slot's own devices.
    pub fn env(self, devices: &[String]) -> Vec<(String, String)> {
        let joined = devices.join(",");
        match self {
            AcceleratorKind::Nvidia => vec![(CUDA_VISIBLE_DEVICES.into(), joined)],
            AcceleratorKind::Amd => {
                let local: Vec<String> = (0..devices.len()).map(|i| i.to_string()).collect();
                vec![
                    ("ROCR_VISIBLE_DEVICES".into(), joined),
                    ("HIP_VISIBLE_DEVICES".into(), local.join(",")),
                ]
            }
            AcceleratorKind::Intel => vec![("ZE_AFFINITY_MASK".into(), joined)],
        }
    }
}

impl fmt::Display for AcceleratorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The variable that names the NVIDIA devices a process sees (and numbers
/// them for the CUDA runtime in the order given).
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

/// How a node's cores are shared among a worker's slots.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CpuAffinity {
    /// Processes run wherever the worker may (no affinity set).
    #[default]
    None,
    /// Each slot a contiguous share of the cores the worker may use.
    Block,
    /// Slot `i` takes every `slots`-th core from the `i`-th on.
    Alternating,
    /// Groups of cores (one `list:` group, or several separated by `:`):
    /// the slots are split evenly among the groups (say one per socket)
    /// and each group's cores among its slots, as `block` does. Cores left
    /// out of every group (reserved ones, such as Aurora's 0 and 52) go to
    /// no slot.
    List(Vec<Vec<u32>>),
}

impl CpuAffinity {
    /// Parses `none`, `block`, `alternating` or `list:GROUP[:GROUP…]`,
    /// each group a core list such as `1-51,53-103`.
    pub fn parse(text: &str) -> Result<CpuAffinity, PlacementError> {
        let text = text.trim();
        match text {
            "none" => return Ok(CpuAffinity::None),
            "block" => return Ok(CpuAffinity::Block),
            "alternating" => return Ok(CpuAffinity::Alternating),
            _ => {}
        }
        let Some(groups) = text.strip_prefix("list:") else {
            return Err(PlacementError::Affinity(format!(
                "`{text}` is not one of none, block, alternating or list:CORES (e.g. list:1-51,53-103)"
            )));
        };
        let groups = groups
            .split(':')
            .map(parse_cpu_list)
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = BTreeSet::new();
        for cpu in groups.iter().flatten() {
            if !seen.insert(*cpu) {
                return Err(PlacementError::Affinity(format!(
                    "`{text}` names core {cpu} twice"
                )));
            }
        }
        Ok(CpuAffinity::List(groups))
    }

    /// The cores this rule names, if it names any (`list:`).
    pub fn named_cores(&self) -> impl Iterator<Item = u32> + '_ {
        let groups: &[Vec<u32>] = match self {
            CpuAffinity::List(groups) => groups,
            _ => &[],
        };
        groups.iter().flatten().copied()
    }
}

impl fmt::Display for CpuAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuAffinity::None => f.write_str("none"),
            CpuAffinity::Block => f.write_str("block"),
            CpuAffinity::Alternating => f.write_str("alternating"),
            CpuAffinity::List(groups) => {
                let groups: Vec<String> = groups.iter().map(|g| format_cpu_list(g)).collect();
                write!(f, "list:{}", groups.join(":"))
            }
        }
    }
}

impl Serialize for CpuAffinity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Accelerators or cores that cannot be shared out as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// An accelerator name that cannot be one.
    #[error(
        "accelerator `{0}` is not a device name (letters, digits, '.', '-', '_' or ':', as in 0, 1 or 0.1)"
    )]
    BadDevice(String),
    /// The same accelerator named twice.
    #[error("accelerator `{0}` is named twice")]
    DuplicateDevice(String),
    /// Accelerators without a vendor.
    #[error(
        "accelerators are named but not their kind: set accelerator_kind to nvidia, amd or intel"
    )]
    NoKind,
    /// Accelerators that do not split evenly among the slots.
    #[error(
        "{devices} accelerators cannot be shared evenly among {slots} slots: use a number of slots that divides {devices} (one slot per accelerator is {devices})"
    )]
    Uneven {
        /// Accelerators.
        devices: usize,
        /// Slots.
        slots: u32,
    },
    /// A malformed affinity or core list.
    #[error("{0}")]
    Affinity(String),
    /// Too few cores for the slots.
    #[error("{cores} cores ({list}) cannot give each of {slots} slots a core of its own")]
    TooFewCores {
        /// Cores in the group.
        cores: usize,
        /// The group, as a core list.
        list: String,
        /// Slots that share it.
        slots: u32,
    },
    /// Core groups that do not split the slots evenly.
    #[error(
        "{groups} core groups cannot take {slots} slots evenly: use a number of slots that is a multiple of {groups}"
    )]
    UnevenGroups {
        /// Groups.
        groups: usize,
        /// Slots.
        slots: u32,
    },
    /// Cores the node does not have (or the worker may not use).
    #[error(
        "cpu_affinity names cores this node does not have or this worker may not use: {missing} (it may use {available})"
    )]
    MissingCores {
        /// The cores named but not available, as a core list.
        missing: String,
        /// The cores available, as a core list.
        available: String,
    },
}

/// Parses a core list: numbers and ranges separated by commas
/// (`1-51,53-103`), in any order, each core once.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, PlacementError> {
    let bad = |why: &str| PlacementError::Affinity(format!("core list `{text}`: {why}"));
    let mut cores = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let number = |s: &str| -> Result<u32, PlacementError> {
            match s.trim().parse::<u32>() {
                Ok(n) if n <= MAX_CPU => Ok(n),
                Ok(_) => Err(bad(&format!("core {s} is beyond {MAX_CPU}"))),
                Err(_) => Err(bad(&format!(
                    "`{s}` is not a core number or range (like 0-3)"
                ))),
            }
        };
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if first > last {
            return Err(bad(&format!("range {part} runs backwards")));
        }
        cores.extend(first..=last);
    }
    let unique: BTreeSet<u32> = cores.iter().copied().collect();
    if unique.len() != cores.len() {
        return Err(bad("names a core twice"));
    }
    Ok(cores)
}

/// `cores` as a core list, ranges collapsed (`0-3,8`); empty for none.
pub fn format_cpu_list(cores: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let start = cores[i];
        let mut end = start;
        while i + 1 < cores.len() && cores[i + 1] == end.saturating_add(1) {
            i += 1;
            end = cores[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Checks accelerator names: each one usable in a comma-separated
/// variable, and none twice.
pub fn check_devices(devices: &[String]) -> Result<(), PlacementError> {
    let mut seen = BTreeSet::new();
    for d in devices {
        let ok = !d.is_empty()
            && d.len() <= 128
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !ok {
            return Err(PlacementError::BadDevice(d.clone()));
        }
        if !seen.insert(d.as_str()) {
            return Err(PlacementError::DuplicateDevice(d.clone()));
        }
    }
    Ok(())
}

/// Accelerators named `0` to `count - 1`, for a site that gives a count.
pub fn numbered_devices(count: u32) -> Vec<String> {
    (0..count).map(|i| i.to_string()).collect()
}

/// A node's accelerators and the rule for its cores, as a worker is told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeResources {
    /// The node's accelerators, by the names the vendor's variable takes.
    pub devices: Vec<String>,
    /// Their vendor (needed when there are any).
    pub kind: Option<AcceleratorKind>,
    /// How the cores are shared.
    pub affinity: CpuAffinity,
}

/// What one slot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotPlacement {
    /// Its accelerators (none when the node names none).
    pub devices: Vec<String>,
    /// Variables for its processes, that make its devices the only ones
    /// they see.
    pub env: Vec<(String, String)>,
    /// The cores its processes run on; `None`: wherever the worker may.
    pub cpus: Option<Vec<u32>>,
}

/// Checks that `node` can be shared among `slots` slots (on a node whose
/// cores are not known yet): what a site file's check can tell.
pub fn check_split(node: &NodeResources, slots: u32) -> Result<(), PlacementError> {
    split_devices(node, slots.max(1))?;
    if let CpuAffinity::List(groups) = &node.affinity {
        split_groups(groups, slots.max(1))?;
    }
    Ok(())
}

/// The slots' accelerators and cores: `node`'s accelerators shared evenly
/// among `slots` slots, and the cores by its affinity rule, from
/// `available` (the cores the worker may use, ascending).
pub fn place(
    node: &NodeResources,
    slots: u32,
    available: &[u32],
) -> Result<Vec<SlotPlacement>, PlacementError> {
    let slots = slots.max(1);
    let devices = split_devices(node, slots)?;
    let cpus = split_cpus(&node.affinity, slots, available)?;
    Ok(devices
        .into_iter()
        .zip(cpus)
        .map(|(devices, cpus)| SlotPlacement {
            env: match node.kind {
                Some(kind) if !devices.is_empty() => kind.env(&devices),
                _ => Vec::new(),
            },
            devices,
            cpus,
        })
        .collect())
}

/// Each slot's accelerators: consecutive, the same number each.
fn split_devices(node: &NodeResources, slots: u32) -> Result<Vec<Vec<String>>, PlacementError> {
    if node.devices.is_empty() {
        return Ok(vec![Vec::new(); slots as usize]);
    }
    check_devices(&node.devices)?;
    if node.kind.is_none() {
        return Err(PlacementError::NoKind);
    }
    let count = node.devices.len();
    if count % slots as usize != 0 {
        return Err(PlacementError::Uneven {
            devices: count,
            slots,
        });
    }
    let each = count / slots as usize;
    Ok(node.devices.chunks(each).map(<[String]>::to_vec).collect())
}

/// Each slot's cores, by `affinity`, from `available`.
fn split_cpus(
    affinity: &CpuAffinity,
    slots: u32,
    available: &[u32],
) -> Result<Vec<Option<Vec<u32>>>, PlacementError> {
    let per_slot = match affinity {
        CpuAffinity::None => return Ok(vec![None; slots as usize]),
        CpuAffinity::Block => split_groups(&[available.to_vec()], slots)?,
        CpuAffinity::Alternating => {
            enough_cores(available, slots)?;
            (0..slots as usize)
                .map(|i| {
                    available
                        .iter()
                        .skip(i)
                        .step_by(slots as usize)
                        .copied()
                        .collect()
                })
                .collect()
        }
        CpuAffinity::List(groups) => {
            let have: BTreeSet<u32> = available.iter().copied().collect();
            let missing: Vec<u32> = affinity
                .named_cores()
                .filter(|c| !have.contains(c))
                .collect::<BTreeSet<u32>>()
                .into_iter()
                .collect();
            if !missing.is_empty() {
                return Err(PlacementError::MissingCores {
                    missing: format_cpu_list(&missing),
                    available: format_cpu_list(available),
                });
            }
            split_groups(groups, slots)?
        }
    };
    Ok(per_slot.into_iter().map(Some).collect())
}

/// Slots shared evenly among `groups`, and each group's cores among its
/// slots in contiguous runs whose sizes differ by one at most.
fn split_groups(groups: &[Vec<u32>], slots: u32) -> Result<Vec<Vec<u32>>, PlacementError> {
    if groups.is_empty() || slots as usize % groups.len() != 0 {
        return Err(PlacementError::UnevenGroups {
            groups: groups.len(),
            slots,
        });
    }
    let per_group = slots / groups.len() as u32;
    let mut out = Vec::with_capacity(slots as usize);
    for group in groups {
        enough_cores(group, per_group)?;
        let (each, extra) = (
            group.len() / per_group as usize,
            group.len() % per_group as usize,
        );
        let mut start = 0;
        for i in 0..per_group as usize {
            let len = each + usize::from(i < extra);
            out.push(group[start..start + len].to_vec());
            start += len;
        }
    }
    Ok(out)
}

/// `cores` can give each of `slots` slots one of its own.
fn enough_cores(cores: &[u32], slots: u32) -> Result<(), PlacementError> {
    if cores.len() < slots as usize {
        return Err(PlacementError::TooFewCores {
            cores: cores.len(),
            list: format_cpu_list(cores),
            slots,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
